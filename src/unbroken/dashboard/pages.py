"""The HTML pages and the actions their forms post.

Overview, jobs (filtered, paged, one job in full), long jobs, dead letters, queues and
schedules. Every action is a POST that `guard` lets through only with a valid CSRF token
on a writable dashboard; a bulk action first shows a confirmation page with the count it
will touch, and ends in a redirect that says what it did.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from unbroken.dashboard.params import (
    MAX_ID,
    filter_values,
    int_param,
    job_filter,
    text_param,
)
from unbroken.dashboard.security import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, foreign_post
from unbroken.dashboard.workflow_graph import levels
from unbroken.ops.rows import DeadGroup
from unbroken.ops.store import (
    CANCELLABLE_STATES,
    RETRYABLE_STATES,
    DeadLetterFilter,
    OperatorStore,
)
from unbroken.states import JobState

if TYPE_CHECKING:
    from unbroken.dashboard.app import Dashboard

# The overview's chart windows: name -> (seconds, bucket seconds).
WINDOWS = {"1h": (3600, 60), "6h": (21600, 300), "24h": (86400, 900), "7d": (604800, 3600)}


def window_of(request: Request) -> str:
    window = request.query_params.get("window", "1h")
    return window if window in WINDOWS else "1h"


def overview_data(d: Dashboard, s: OperatorStore, window: str) -> dict[str, Any]:
    """What the overview shows (and /api/overview returns)."""
    seconds, bucket = WINDOWS[window]
    series = s.stats_series(seconds, bucket)
    recent = s.stats_series(300, 60)
    totals = {state: 0 for state in JobState} | s.state_totals()
    done = sum(p.succeeded + p.failed for p in recent)
    failed = sum(p.failed for p in recent)
    workers = s.worker_list()
    queues = s.queue_list()
    return {
        "series": series,
        "chart": {
            "bucket_s": bucket,
            "points": [
                {"t": p.at.isoformat(), "ok": p.succeeded, "failed": p.failed, "dead": p.dead}
                for p in series
            ],
        },
        "totals": totals,
        "per_minute": done / 5.0,
        "recent_failure_rate": (failed / done) if done else None,
        "queues": queues,
        "max_backlog": max([q.available for q in queues] + [1]),
        "workers": workers,
        "beating": sum(1 for w in workers if not w.silent),
        "health": d.health(s),
        "pools": d.pools(),
        "connections": s.connection_list(),
        "stuck": s.stuck_jobs(),
    }


class Pages:
    """The HTML routes of one dashboard."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard
        self.view = dashboard.view

    async def guard(self, request: Request) -> dict[str, str] | Response:
        """The form of a genuine action, or the 403 that refuses it."""
        if self.d.read_only:
            return self.view.error(request, 403, "the dashboard is read-only")
        foreign = foreign_post(request.headers, request.url.scheme)
        if foreign:
            return self.view.error(request, 403, foreign)
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        submitted = values.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not self.d.csrf.check(request.cookies.get(CSRF_COOKIE), submitted):
            reason = "missing or invalid CSRF token: reload the page and retry"
            return self.view.error(request, 403, reason)
        return values

    async def posted(
        self, request: Request, actions: tuple[str, ...]
    ) -> tuple[dict[str, str], str] | Response:
        """The form and the URL's action of a genuine POST, or the response refusing it."""
        form = await self.guard(request)
        if isinstance(form, Response):
            return form
        action = request.path_params["action"]
        if action not in actions:
            return self.view.error(request, 404, "unknown action")
        return form, action

    # --- overview -----------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        window = window_of(request)
        data = await self.d.store(lambda s: overview_data(self.d, s, window))
        return self.view.page(request, "overview.html", nav="overview", window=window, **data)

    # --- jobs ---------------------------------------------------------------------------
    async def jobs(self, request: Request) -> Response:
        flt = job_filter(request.query_params)
        before = int_param(request.query_params, "before", high=MAX_ID)

        def read(s: OperatorStore) -> dict[str, Any]:
            jobs, matching = s.job_page(flt, limit=50, before_id=before)
            return {
                "jobs": jobs,
                "matching": matching.count,
                "search": matching,
                "counts": s.state_totals(),
                "queues": [q.name for q in s.queue_list()],
            }

        data = await self.d.store(read)
        params = filter_values(request.query_params)
        links = {"": urlencode({k: v for k, v in params.items() if k != "state"})}
        links.update({s: urlencode({**params, "state": s}) for s in JobState})
        if data["jobs"]:
            links["older"] = urlencode({**params, "before": data["jobs"][-1].id})
        if data["search"].stopped_at is not None:  # a search (JobFilter.searched) stopped
            links["search_on"] = urlencode({**params, "before": data["search"].stopped_at})
        return self.view.page(
            request,
            "jobs.html",
            nav="jobs",
            flt=flt,
            before=before,
            params=params,
            query=urlencode(params),
            links=links,
            now=datetime.now(UTC),
            **data,
        )

    async def jobs_confirm(self, request: Request) -> Response:
        action = request.query_params.get("action", "")
        if action not in ("retry", "cancel"):
            return self.view.error(request, 400, "unknown action")
        flt = job_filter(request.query_params)
        scoped = flt.restricted_to(RETRYABLE_STATES if action == "retry" else CANCELLABLE_STATES)
        count, sample = await self.d.store(
            lambda s: (s.job_count(scoped), s.job_list(scoped, limit=20))
        )
        return self.view.page(
            request,
            "confirm_jobs.html",
            nav="jobs",
            action=action,
            scoped=scoped,
            count=count,
            sample=sample,
            params=filter_values(request.query_params),
        )

    async def jobs_bulk(self, request: Request) -> Response:
        form = await self.guard(request)
        if isinstance(form, Response):
            return form
        action = form.get("action")
        flt = job_filter(form)
        if action == "retry":
            result = await self.d.store(lambda s: s.job_retry_matching(flt))
            verb = "Retried"
        elif action == "cancel":
            result = await self.d.store(lambda s: s.job_cancel_matching(flt))
            verb = "Cancelled"
        else:
            return self.view.error(request, 400, "unknown action")
        back = urlencode(filter_values(form))
        return self.view.redirect(
            request, f"/jobs?{back}", f"{verb} {result.changed} of {result.matched} job(s)."
        )

    async def job(self, request: Request) -> Response:
        job_id: int = request.path_params["job_id"]
        job = await self.d.store(lambda s: s.job_get(job_id)) if job_id <= MAX_ID else None
        if job is None:
            return self.view.error(request, 404, f"no job {job_id}", nav="jobs")
        return self.view.page(
            request,
            "job.html",
            nav="jobs",
            job=job,
            progress=job.progress_view(),
            lease_in=(job.lease_expires_at - job.now).total_seconds()
            if job.lease_expires_at
            else None,
            ago=lambda at: None if at is None else (job.now - at).total_seconds(),
            can_retry=job.state in RETRYABLE_STATES,
            can_cancel=job.state in CANCELLABLE_STATES and not job.cancel_requested,
        )

    async def job_action(self, request: Request) -> Response:
        posted = await self.posted(request, ("retry", "cancel"))
        if isinstance(posted, Response):
            return posted
        _, action = posted
        job_id: int = request.path_params["job_id"]
        if job_id > MAX_ID:
            return self.view.error(request, 404, f"no job {job_id}", nav="jobs")
        if action == "retry":
            done = await self.d.store(lambda s: s.job_retry([job_id]))
            message = f"Job {job_id} queued again." if done else f"Job {job_id} was not retried."
        else:
            changes = await self.d.store(lambda s: s.job_cancel([job_id]))
            if not changes:
                message = f"Job {job_id} was already finished."
            elif changes[0].state == JobState.RUNNING:
                message = f"Job {job_id}: cancel requested (it stops at its next heartbeat)."
            else:
                message = f"Job {job_id}: cancelled."
        return self.view.redirect(request, f"/jobs/{job_id}", message)

    async def long_jobs(self, request: Request) -> Response:
        rows = await self.d.store(lambda s: s.long_jobs())
        return self.view.page(request, "long.html", nav="long", jobs=rows)

    # --- dead letters -------------------------------------------------------------------
    async def dead(self, request: Request) -> Response:
        groups = await self.d.store(lambda s: s.dead_letter_groups())
        return self.view.page(
            request,
            "dead.html",
            nav="dead",
            groups=groups,
            total=sum(g.jobs for g in groups),
            now=datetime.now(UTC),
        )

    async def dead_confirm(self, request: Request) -> Response:
        action = request.query_params.get("action", "")
        key = text_param(request.query_params, "key")
        if action not in ("retry", "purge"):
            return self.view.error(request, 400, "unknown action")

        def read(s: OperatorStore) -> tuple[int, list[DeadGroup]]:
            groups = [g for g in s.dead_letter_groups() if key is None or g.key == key]
            return s.dead_letter_count(DeadLetterFilter(key)), groups

        count, groups = await self.d.store(read)
        return self.view.page(
            request,
            "confirm_dead.html",
            nav="dead",
            action=action,
            key=key,
            count=count,
            groups=groups,
        )

    async def dead_action(self, request: Request) -> Response:
        posted = await self.posted(request, ("retry", "purge"))
        if isinstance(posted, Response):
            return posted
        form, action = posted
        key = text_param(form, "key")
        if action == "retry":
            result = await self.d.store(lambda s: s.dead_letter_retry(DeadLetterFilter(key)))
            message = f"Retried {result.changed} of {result.matched} dead job(s)."
        else:
            result = await self.d.store(lambda s: s.dead_letter_purge(DeadLetterFilter(key)))
            message = f"Deleted {result.changed} dead job(s)."
        return self.view.redirect(request, "/dead", message)

    # --- schedules ----------------------------------------------------------------------
    async def schedules(self, request: Request) -> Response:
        rows = await self.d.store(lambda s: s.schedule_list())
        return self.view.page(request, "schedules.html", nav="schedules", schedules=rows)

    async def workflow(self, request: Request) -> Response:
        workflow_id: int = request.path_params["workflow_id"]
        found = await self.d.store(lambda s: s.workflow_get(workflow_id))
        if found is None:
            return self.view.error(request, 404, f"no workflow {workflow_id}", nav="jobs")
        name, steps = found
        return self.view.page(
            request,
            "workflow.html",
            nav="jobs",
            id=workflow_id,
            workflow_name=name,
            levels=levels(steps),
        )

    # --- CDC pipelines -----------------------------------------------------------------
    async def pipelines(self, request: Request) -> Response:
        rows = await self.d.store(lambda s: s.pipeline_list())
        now = datetime.now(UTC)
        return self.view.page(request, "pipelines.html", nav="pipelines", pipelines=rows, now=now)

    async def pipeline(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        found = await self.d.store(lambda s: s.pipeline_get(name))
        if found is None:
            return self.view.error(request, 404, f"no pipeline {name!r}", nav="pipelines")
        now = datetime.now(UTC)
        return self.view.page(request, "pipeline.html", nav="pipelines", p=found, now=now)

    # --- queues -------------------------------------------------------------------------
    async def queues(self, request: Request) -> Response:
        rows = await self.d.store(lambda s: s.queue_list())
        return self.view.page(
            request,
            "queues.html",
            nav="queues",
            queues=rows,
            max_backlog=max([q.available for q in rows] + [1]),
        )

    async def queue_action(self, request: Request) -> Response:
        posted = await self.posted(request, ("pause", "resume"))
        if isinstance(posted, Response):
            return posted
        form, action = posted
        name = text_param(form, "name")
        if not name:
            return self.view.error(request, 400, "no queue named")
        paused = action == "pause"
        await self.d.store(lambda s: s.queue_set_paused(name, paused))
        return self.view.redirect(
            request, "/queues", f"Queue {name} {'paused' if paused else 'resumed'}."
        )
