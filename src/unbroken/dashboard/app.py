"""The dashboard: a Starlette app, server-rendered with Jinja2, live by polling.

`create_app(settings)` gives an ASGI app that `unbroken dashboard` serves with uvicorn, or
that a user mounts in their own app (`Mount("/jobs", app=create_app(...))`). The pool is
opened on the first request (a mounted sub-app gets no lifespan events) and closed by the
standalone server's lifespan, or by `app.state.dashboard.close()`.

Live updates: every page marks its changing regions `data-live`; app.js fetches the same
URL every few seconds and swaps those regions in, so rendering stays in one place (the
templates) and the script stays small. Chart data travels inside a region as JSON. The same
data is available as JSON under /api/ for scripts.

Every action is a POST with a CSRF token (see security.py); a read-only app renders no
action and refuses every POST.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlencode

import jinja2
import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from unbroken.dashboard.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    BasicAuth,
    Csrf,
    credentials_from_env,
)
from unbroken.db._sync.pool import Database
from unbroken.db.conninfo import redact
from unbroken.errors import ConfigError, DatabaseUnavailable, StatementDeadline
from unbroken.metrics import DatabaseCollector, PoolCollector
from unbroken.ops import health as health_mod
from unbroken.ops.filters import JobFilter
from unbroken.ops.format import format_age, jsonable, shown_json
from unbroken.ops.store import CANCELLABLE_STATES, RETRYABLE_STATES, OperatorStore
from unbroken.settings import Settings, load_settings
from unbroken.states import JobState

STATES = tuple(JobState)

HERE = Path(__file__).parent
FLASH_COOKIE = "unbroken_flash"
POOL_ROLE = "dashboard"
WINDOWS = {"1h": (3600, 60), "6h": (21600, 300), "24h": (86400, 900), "7d": (604800, 3600)}
T = TypeVar("T")


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise (none do)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = lambda v: "–" if v is None else format_age(v)
    env.filters["per"] = _per
    env.filters["pct"] = lambda v: "–" if v is None else f"{v:.1%}"
    env.filters["secs"] = _secs
    env.filters["num"] = lambda v: "–" if v is None else f"{v:,.0f}"
    env.filters["pretty"] = lambda v: shown_json(v, indent=2)
    env.filters["compact"] = shown_json
    env.filters["clip"] = lambda s, n=120: s if len(s) <= n else s[: n - 1] + "…"
    env.globals["STATES"] = STATES
    return env


def _per(bucket_s: int) -> str:
    names = {60: "minute", 3600: "hour", 86400: "day"}
    return names.get(bucket_s) or f"{format_age(bucket_s).removesuffix('00s')}"


def _secs(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


class Dashboard:
    """The app's state and handlers; one per `create_app`."""

    def __init__(
        self,
        settings: Settings,
        database: Database | None,
        *,
        read_only: bool,
        secret: bytes | None,
        poll_interval: float,
        title: str,
    ) -> None:
        self.settings = settings
        self.read_only = read_only
        self.poll_interval = poll_interval
        self.title = title
        self.csrf = Csrf(secret)
        self.env = _templates()
        self._database = database
        self._owns_database = database is None
        self._opened = False
        self._lock = threading.Lock()
        self.metrics_registry = CollectorRegistry()

    # --- the database -------------------------------------------------------------------
    def database(self) -> Database:
        with self._lock:
            if self._database is None:
                from unbroken.db.target import resolve_target

                target = resolve_target(self.settings)
                self._database = Database(target.conninfo, self.settings)
            if not self._opened:
                self._database.pool(POOL_ROLE)
                self._database.open(POOL_ROLE)
                store = OperatorStore(self._database.pool(POOL_ROLE), self.settings.schema_name)
                self.metrics_registry.register(DatabaseCollector(store))
                self.metrics_registry.register(PoolCollector(self._database.stats))
                self._opened = True
            return self._database

    def close(self) -> None:
        with self._lock:
            if self._database is not None and self._owns_database:
                self._database.close()
            self._opened = False

    def run(self, fn: Callable[[OperatorStore], T]) -> T:
        """`fn(store)` on one pooled connection (one checkout per request, not per query)."""
        pool = self.database().pool(POOL_ROLE)
        with pool.connection() as conn:
            return fn(OperatorStore(conn, self.settings.schema_name))

    async def store(self, fn: Callable[[OperatorStore], T]) -> T:
        try:
            return await run_in_threadpool(self.run, fn)
        except (psycopg.Error, DatabaseUnavailable, StatementDeadline) as exc:
            text = redact(str(exc)).strip()
            raise DatabaseDown(text.splitlines()[0] if text else type(exc).__name__) from exc

    def health(self, store: OperatorStore) -> health_mod.HealthReport:
        pools = self._database.stats() if self._database is not None else []
        return health_mod.check(store, pools)

    # --- rendering ----------------------------------------------------------------------
    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        token = request.cookies.get(CSRF_COOKIE)
        fresh = not self.csrf.valid(token)
        if fresh:
            token = self.csrf.new_token()
        flash = request.cookies.get(FLASH_COOKIE)
        polled = request.headers.get("x-unbroken-poll") == "1"
        html = self.env.get_template(name).render(
            base=base,
            title=self.title,
            read_only=self.read_only,
            csrf_field=CSRF_FIELD,
            csrf_token=token,
            poll_ms=int(self.poll_interval * 1000),
            flash=unquote(flash) if flash and not polled else None,
            request_path=request.url.path,
            **ctx,
        )
        response = HTMLResponse(html, status_code=status)
        path = base or "/"
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                token or "",
                httponly=True,
                samesite="strict",
                path=path,
                secure=request.url.scheme == "https",
            )
        if flash and not polled:
            response.delete_cookie(FLASH_COOKIE, path=path)
        return response

    def redirect(self, request: Request, to: str, message: str) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        response = RedirectResponse(base + to, status_code=303)
        response.set_cookie(
            FLASH_COOKIE,
            quote(message),
            max_age=60,
            httponly=True,
            samesite="strict",
            path=base or "/",
        )
        return response

    async def guard(self, request: Request) -> dict[str, str] | Response:
        """The form of a genuine action, or the 403 that refuses it."""
        if self.read_only:
            return self.refuse(request, "the dashboard is read-only")
        if request.headers.get("sec-fetch-site") == "cross-site":
            return self.refuse(request, "cross-site request refused")
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        submitted = values.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not self.csrf.check(request.cookies.get(CSRF_COOKIE), submitted):
            return self.refuse(request, "missing or invalid CSRF token: reload the page and retry")
        return values

    def refuse(self, request: Request, reason: str) -> Response:
        return self.render(request, "error.html", status=403, reason=reason, nav="")

    # --- pages --------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        window = request.query_params.get("window", "1h")
        if window not in WINDOWS:
            window = "1h"
        data = await self.store(lambda s: self._overview(s, window))
        return self.render(request, "overview.html", nav="overview", window=window, **data)

    def _overview(self, s: OperatorStore, window: str) -> dict[str, Any]:
        seconds, bucket = WINDOWS[window]
        series = s.stats_series(seconds, bucket)
        recent = s.stats_series(300, 60)
        counts = s.state_counts()
        totals = {state: 0 for state in STATES}
        for c in counts:
            totals[c.state] += c.jobs
        done = sum(p.succeeded + p.failed for p in recent)
        failed = sum(p.failed for p in recent)
        workers = s.worker_list()
        queues = s.queue_list()
        pools = self._database.stats() if self._database is not None else []
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
            "health": self.health(s),
            "pools": pools,
            "connections": s.connection_list(),
            "stuck": s.stuck_jobs(),
        }

    def _filter(self, request: Request) -> JobFilter:
        q = request.query_params
        return JobFilter.build(
            state=q.get("state") or None,
            queue=q.get("queue") or None,
            task=q.get("task") or None,
            older_than=q.get("older_than") or None,
            args=q.get("args") or None,
        )

    @staticmethod
    def _filter_query(request: Request) -> dict[str, str]:
        keys = ("state", "queue", "task", "older_than", "args")
        return {k: request.query_params[k] for k in keys if request.query_params.get(k)}

    async def jobs(self, request: Request) -> Response:
        try:
            flt = self._filter(request)
        except ConfigError as exc:
            return self.render(request, "error.html", status=400, reason=str(exc), nav="jobs")
        before = _int(request.query_params.get("before"))

        def read(s: OperatorStore) -> dict[str, Any]:
            counts: dict[str, int] = {}
            for c in s.state_counts():
                counts[c.state] = counts.get(c.state, 0) + c.jobs
            return {
                "jobs": s.job_list(flt, limit=50, before_id=before),
                "matching": s.job_count(flt),
                "counts": counts,
                "queues": [q.name for q in s.queue_list()],
            }

        data = await self.store(read)
        params = self._filter_query(request)
        links = {"": urlencode({k: v for k, v in params.items() if k != "state"})}
        links.update({s: urlencode({**params, "state": s}) for s in STATES})
        if data["jobs"]:
            links["older"] = urlencode({**params, "before": data["jobs"][-1].id})
        return self.render(
            request,
            "jobs.html",
            nav="jobs",
            flt=flt,
            params=params,
            query=urlencode(params),
            links=links,
            now=datetime.now(UTC),
            **data,
        )

    async def jobs_confirm(self, request: Request) -> Response:
        action = request.query_params.get("action", "")
        if action not in ("retry", "cancel"):
            return self.render(request, "error.html", status=400, reason="unknown action", nav="")
        flt = self._filter(request)
        scoped = flt.restricted_to(RETRYABLE_STATES if action == "retry" else CANCELLABLE_STATES)
        count, sample = await self.store(
            lambda s: (s.job_count(scoped), s.job_list(scoped, limit=20))
        )
        return self.render(
            request,
            "confirm_jobs.html",
            nav="jobs",
            action=action,
            scoped=scoped,
            count=count,
            sample=sample,
            params=self._filter_query(request),
        )

    async def jobs_bulk(self, request: Request) -> Response:
        form = await self.guard(request)
        if isinstance(form, Response):
            return form
        action = form.get("action")
        flt = JobFilter.build(
            state=form.get("state") or None,
            queue=form.get("queue") or None,
            task=form.get("task") or None,
            older_than=form.get("older_than") or None,
            args=form.get("args") or None,
        )
        if action == "retry":
            result = await self.store(lambda s: s.job_retry_matching(flt))
            verb = "Retried"
        elif action == "cancel":
            result = await self.store(lambda s: s.job_cancel_matching(flt))
            verb = "Cancelled"
        else:
            return self.render(request, "error.html", status=400, reason="unknown action", nav="")
        keys = ("state", "queue", "task", "older_than", "args")
        back = urlencode({k: form[k] for k in keys if form.get(k)})
        return self.redirect(
            request, f"/jobs?{back}", f"{verb} {result.changed} of {result.matched} job(s)."
        )

    async def job(self, request: Request) -> Response:
        job_id = _int(request.path_params["job_id"])
        job = await self.store(lambda s: s.job_get(job_id or 0))
        if job is None:
            return self.render(
                request, "error.html", status=404, reason=f"no job {job_id}", nav="jobs"
            )
        return self.render(
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
        form = await self.guard(request)
        if isinstance(form, Response):
            return form
        job_id = _int(request.path_params["job_id"]) or 0
        action = request.path_params["action"]
        if action not in ("retry", "cancel"):
            return self.render(request, "error.html", status=404, reason="unknown action", nav="")
        if action == "retry":
            done = await self.store(lambda s: s.job_retry([job_id]))
            message = f"Job {job_id} queued again." if done else f"Job {job_id} was not retried."
        else:
            states = await self.store(lambda s: s.job_cancel([job_id]))
            message = (
                f"Job {job_id}: "
                + (
                    "cancel requested (it stops at its next heartbeat)."
                    if states and states[0].state == JobState.RUNNING
                    else "cancelled."
                )
                if states
                else f"Job {job_id} was already finished."
            )
        return self.redirect(request, f"/jobs/{job_id}", message)

    async def long_jobs(self, request: Request) -> Response:
        rows = await self.store(lambda s: s.long_jobs())
        return self.render(request, "long.html", nav="long", jobs=rows)

    async def dead(self, request: Request) -> Response:
        groups = await self.store(lambda s: s.dead_letter_groups())
        return self.render(
            request,
            "dead.html",
            nav="dead",
            groups=groups,
            total=sum(g.jobs for g in groups),
            now=datetime.now(UTC),
        )

    async def dead_confirm(self, request: Request) -> Response:
        action = request.query_params.get("action", "")
        key = request.query_params.get("key") or None
        if action not in ("retry", "purge"):
            return self.render(request, "error.html", status=400, reason="unknown action", nav="")

        def read(s: OperatorStore) -> tuple[int, Any]:
            groups = [g for g in s.dead_letter_groups() if key is None or g.key == key]
            return s.dead_letter_count(key), groups

        count, groups = await self.store(read)
        return self.render(
            request,
            "confirm_dead.html",
            nav="dead",
            action=action,
            key=key,
            count=count,
            groups=groups,
        )

    async def dead_action(self, request: Request) -> Response:
        form = await self.guard(request)
        if isinstance(form, Response):
            return form
        key = form.get("key") or None
        action = request.path_params["action"]
        if action not in ("retry", "purge"):
            return self.render(request, "error.html", status=404, reason="unknown action", nav="")
        if action == "retry":
            result = await self.store(lambda s: s.dead_letter_retry(key))
            message = f"Retried {result.changed} of {result.matched} dead job(s)."
        else:
            result = await self.store(lambda s: s.dead_letter_purge(key))
            message = f"Deleted {result.changed} dead job(s)."
        return self.redirect(request, "/dead", message)

    async def queues(self, request: Request) -> Response:
        rows = await self.store(lambda s: s.queue_list())
        return self.render(
            request,
            "queues.html",
            nav="queues",
            queues=rows,
            max_backlog=max([q.available for q in rows] + [1]),
        )

    async def queue_action(self, request: Request) -> Response:
        form = await self.guard(request)
        if isinstance(form, Response):
            return form
        name = form.get("name", "")
        if request.path_params["action"] not in ("pause", "resume"):
            return self.render(request, "error.html", status=404, reason="unknown action", nav="")
        if not name:
            return self.render(request, "error.html", status=400, reason="no queue named", nav="")
        paused = request.path_params["action"] == "pause"
        await self.store(lambda s: s.queue_set_paused(name, paused))
        return self.redirect(
            request, "/queues", f"Queue {name} {'paused' if paused else 'resumed'}."
        )

    # --- JSON -------------------------------------------------------------------------
    async def api_overview(self, request: Request) -> Response:
        window = request.query_params.get("window", "1h")
        data = await self.store(lambda s: self._overview(s, window if window in WINDOWS else "1h"))
        data["health"] = data["health"].as_dict()
        data.pop("chart")
        return JSONResponse(jsonable(data))

    async def api_jobs(self, request: Request) -> Response:
        try:
            flt = self._filter(request)
        except ConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        before = _int(request.query_params.get("before"))
        limit = min(_int(request.query_params.get("limit")) or 50, 1000)
        rows = await self.store(lambda s: s.job_list(flt, limit=limit, before_id=before))
        return JSONResponse(jsonable({"filter": flt.describe(), "jobs": rows}))

    async def api_job(self, request: Request) -> Response:
        job_id = _int(request.path_params["job_id"]) or 0
        job = await self.store(lambda s: s.job_get(job_id))
        if job is None:
            return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
        data = jsonable(job)
        data["progress_view"] = jsonable(job.progress_view())
        return JSONResponse(data)

    async def api_long(self, request: Request) -> Response:
        rows = await self.store(lambda s: s.long_jobs())
        return JSONResponse(jsonable({"jobs": rows}))

    async def api_dead(self, request: Request) -> Response:
        rows = await self.store(lambda s: s.dead_letter_groups())
        return JSONResponse(jsonable({"groups": rows}))

    # --- probes and metrics -------------------------------------------------------------
    async def health_full(self, request: Request) -> Response:
        report = await self._report()
        return JSONResponse(report.as_dict(), status_code=200 if report.ready else 503)

    async def health_ready(self, request: Request) -> Response:
        report = await self._report()
        return JSONResponse(
            {"ready": report.ready, "status": report.status},
            status_code=200 if report.ready else 503,
        )

    async def health_live(self, request: Request) -> Response:
        # The process answers: that is liveness. The database's state belongs to readiness.
        return JSONResponse({"live": True})

    async def _report(self) -> health_mod.HealthReport:
        try:
            return await self.store(self.health)
        except Exception as exc:  # unreachable database, exhausted pool: not ready
            reason = health_mod.Reason("database", "critical", f"{type(exc).__name__}: {exc}")
            return health_mod.HealthReport(0, "unhealthy", [reason], live=False)

    async def metrics(self, request: Request) -> Response:
        await run_in_threadpool(self.database)
        body = await run_in_threadpool(generate_latest, self.metrics_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


class DatabaseDown(Exception):
    """The database did not answer a page's queries: shown as a 503, not a traceback."""


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def create_app(
    settings: Settings | None = None,
    database: Database | None = None,
    *,
    read_only: bool = False,
    credentials: tuple[str, str] | bool | None = True,
    secret: bytes | None = None,
    poll_interval: float = 3.0,
    title: str = "unbroken",
) -> Starlette:
    """The dashboard as an ASGI app.

    `database`: reuse your Database (the dashboard takes a pool named "dashboard" from it);
    by default one is made from `settings`. `credentials`: (user, password) for HTTP basic
    auth; True (default) reads UNBROKEN_DASHBOARD_USER/PASSWORD, None or False means none.
    `secret` signs CSRF tokens (random per app by default; give one when several processes
    serve the same users).
    """
    settings = settings or load_settings()
    if credentials is True:
        creds = credentials_from_env()
    elif credentials is False:
        creds = None
    else:
        creds = credentials
    d = Dashboard(
        settings,
        database,
        read_only=read_only,
        secret=secret,
        poll_interval=poll_interval,
        title=title,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(d.close)

    routes = [
        Route("/", d.overview),
        Route("/jobs", d.jobs),
        Route("/jobs/confirm", d.jobs_confirm),
        Route("/jobs/bulk", d.jobs_bulk, methods=["POST"]),
        Route("/jobs/{job_id:int}", d.job),
        Route("/jobs/{job_id:int}/{action:str}", d.job_action, methods=["POST"]),
        Route("/long", d.long_jobs),
        Route("/dead", d.dead),
        Route("/dead/confirm", d.dead_confirm),
        Route("/dead/{action:str}", d.dead_action, methods=["POST"]),
        Route("/queues", d.queues),
        Route("/queues/{action:str}", d.queue_action, methods=["POST"]),
        Route("/api/overview", d.api_overview),
        Route("/api/jobs", d.api_jobs),
        Route("/api/jobs/{job_id:int}", d.api_job),
        Route("/api/long", d.api_long),
        Route("/api/dead", d.api_dead),
        Route("/health", d.health_full),
        Route("/health/ready", d.health_ready),
        Route("/health/live", d.health_live),
        Route("/metrics", d.metrics),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def database_down(request: Request, exc: Exception) -> Response:
        reason = f"the database did not answer: {exc}"
        if request.url.path.removeprefix(request.scope.get("root_path", "")).startswith("/api/"):
            return JSONResponse({"error": reason}, status_code=503)
        return d.render(request, "error.html", status=503, reason=reason, nav="")

    middleware = [Middleware(BasicAuth, credentials=creds)] if creds else []
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={DatabaseDown: database_down},
    )
    app.state.dashboard = d
    return app
