"""`unbroken jobs ls|show|watch|retry|cancel`: list, inspect, follow and act on jobs.

Bulk actions (`retry`, `cancel` with filters instead of ids) say how many jobs they will
touch and ask first, or take `--yes` (see unbroken.cli.output).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn
from rich.table import Table

from unbroken.cli.inputs import args_filter, id_option, job_id, job_ids, number_option
from unbroken.cli.output import (
    STATE_STYLE,
    JsonOpt,
    QueueOpt,
    TaskOpt,
    YesOpt,
    cell,
    confirm,
    console,
    emit_json,
    open_store,
    report,
    show_table,
    since,
    styled,
    with_progress,
)
from unbroken.errors import ConfigError, UnbrokenError
from unbroken.ops.filters import JobFilter
from unbroken.ops.format import format_age, shown_json, to_json
from unbroken.ops.rows import BulkResult, JobDetail, ProgressView
from unbroken.ops.store import (
    CANCELLABLE_STATES,
    RETRYABLE_STATES,
    SEARCH_LIMIT,
    OperatorStore,
)
from unbroken.states import JobState

jobs_app = typer.Typer(help="List, inspect, watch, retry and cancel jobs.", no_args_is_help=True)

StateOpt = Annotated[
    str | None,
    typer.Option("--state", "-s", help="State(s), comma-separated: available,running,dead,..."),
]
OlderOpt = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        help="Created longer ago than this (30s, 5m, 2h, 1d); `ls` searches the newest "
        f"{SEARCH_LIMIT:,} jobs, then says where to go on.",
    ),
]
ArgsOpt = Annotated[
    str | None,
    typer.Option(
        "--args",
        help="Arguments: a JSON object matches by containment ('{\"user\": 5}'), "
        f"other text by substring; `ls` searches the newest {SEARCH_LIMIT:,} jobs, then "
        "says where to go on.",
        callback=args_filter,
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")


def _filter(
    state: str | None, queue: str | None, task: str | None, older: str | None, args: str | None
) -> JobFilter:
    return JobFilter.build(state=state, queue=queue, task=task, older_than=older, args=args)


@jobs_app.command("ls")
def jobs_ls(
    state: StateOpt = None,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    args: ArgsOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Rows to show.")] = 50,
    before: Annotated[
        int | None,
        typer.Option(
            help="Only ids below this one (the next page).", callback=id_option("--before")
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first, filtered by state, queue, task, age or arguments.

    A queue or task over finished jobs, an age or arguments are searched for among the
    newest 10,000 jobs; the list then says where to go on (--before).
    """
    flt = _filter(state, queue, task, older_than, args)
    with open_store() as store:
        flt = replace(flt, task=store.resolve_task(flt.task))
        filtered = flt != JobFilter()
        if filtered or as_json:
            rows, matching = store.job_page(flt, limit=limit, before_id=before)
        else:
            rows, matching = store.job_list(flt, limit=limit, before_id=before), None
        totals = store.state_totals() if matching is None else {}
    if as_json and matching is not None:
        emit_json(
            {
                "filter": flt.describe(),
                "matching": matching.count,
                "searched": matching.searched(),
                "jobs": rows,
            }
        )
        return
    if matching is not None:  # what the filter matches, not the whole table's totals
        shown = f"{len(rows):,} of {matching.count:,} matching {escape(flt.describe())}"
        console.print(f"showing {shown}")
    else:
        console.print(
            "  ".join(f"{styled(s)} {totals[s]:,}" for s in STATE_STYLE if s in totals) or "no jobs"
        )
    table = Table(title=f"jobs: {escape(flt.describe())}", title_justify="left", expand=False)
    for col in ("id", "state", "queue", "task", "try", "age"):
        table.add_column(col, justify="right" if col in ("id", "try", "age") else "left")
    table.add_column("args", overflow="ellipsis", max_width=40)
    table.add_column("last error", overflow="ellipsis", max_width=50)
    for j in rows:
        error = f"{j.last_error_type}: {j.last_error}" if j.last_error_type else ""
        table.add_row(
            str(j.id),
            styled(j.state),
            escape(j.queue),
            escape(j.task),
            f"{j.attempt}/{j.max_attempts}",
            format_age(since(j.created_at)),
            cell(j.args, 40),
            cell(error, 50),
        )
    show_table(table)
    if len(rows) == limit:
        console.print(f"[dim]more: --before {rows[-1].id}[/]")
    elif matching is not None and matching.stopped_at is not None:
        where = "the newest " if before is None else ""
        below = "" if before is None else f" below id {before}"
        console.print(
            f"[dim]searched {where}{matching.examined:,} jobs{below}; "
            f"more: --before {matching.stopped_at}[/]"
        )


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="The job's id.", callback=job_id)],
    as_json: JsonOpt = False,
) -> None:
    """Show one job: arguments, every attempt's error and traceback, progress and lease."""
    with open_store() as store:
        job = store.job_get(job_id)
    if job is None:
        raise UnbrokenError(f"no job {job_id}")
    if as_json:
        emit_json(job)
        return
    _print_job(job)


def _print_job(job: JobDetail) -> None:
    rows = [
        ("state", styled(job.state) + (" (cancel requested)" if job.cancel_requested else "")),
        ("queue / task", f"{escape(job.queue)} / {escape(job.task)}"),
        ("attempt", f"{job.attempt} of {job.max_attempts}  (rescued {job.rescues}×)"),
        ("priority", str(job.priority)),
        (
            "created",
            f"{job.created_at:%Y-%m-%d %H:%M:%S} ({format_age(_age(job, job.created_at))} ago)",
        ),
        ("run at", f"{job.run_at:%Y-%m-%d %H:%M:%S}"),
    ]
    if job.attempted_at:
        rows.append(("attempted", f"{format_age(_age(job, job.attempted_at))} ago"))
    if job.finished_at:
        rows.append(("finished", f"{format_age(_age(job, job.finished_at))} ago"))
    if job.worker_id:
        lease = _age(job, job.lease_expires_at)
        expiry = (
            f"expired {format_age(lease)} ago"
            if lease is not None and lease > 0
            else f"expires in {format_age(-(lease or 0))}"
        )
        rows.append(("worker", f"{escape(job.worker_id)}  lease {expiry}"))
    if job.unique_key:
        rows.append(("unique key", escape(job.unique_key)))
    rows.append(("args", escape(shown_json(job.args, indent=1))))
    view = job.progress_view()
    if view is not None:
        rows.append(("progress", _progress_text(view)))
    if job.checkpoint is not None:
        rows.append(("checkpoint", cell(job.checkpoint, 200)))
    if job.result is not None:
        rows.append(("result", cell(job.result, 200)))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    console.print(Panel(grid, title=f"job {job.id}", title_align="left"))
    for e in job.errors:
        title = f"attempt {e.attempt} · {e.kind or 'failed'} · {e.at or ''} · {e.worker or ''}"
        body = f"[bold red]{escape(e.type or 'Error')}[/]: {escape(e.message or '')}"
        if e.traceback:
            body += "\n[dim]" + escape(e.traceback.rstrip()) + "[/]"
        console.print(Panel(body, title=escape(title), title_align="left", border_style="red"))


def _age(job: JobDetail, at: datetime | None) -> float | None:
    return None if at is None else (job.now - at).total_seconds()


def _progress_text(v: ProgressView) -> str:
    parts = []
    if v.processed is not None:
        parts.append(f"{v.processed:,.0f}" + (f" / {v.total:,.0f}" if v.total else ""))
    if v.fraction is not None:
        parts.append(f"{v.fraction:.1%}")
    if v.failed:
        parts.append(f"{v.failed:,.0f} failed")
    if v.rate is not None:
        parts.append(f"{v.rate:,.1f} rows/s")
    if v.eta_s is not None:
        parts.append(f"ETA {format_age(v.eta_s)}")
    if v.checkpoint_age_s is not None:
        parts.append(f"checkpoint {format_age(v.checkpoint_age_s)} ago")
    if v.message:
        parts.append(escape(v.message))
    return "  ".join(parts) or "-"


@jobs_app.command("watch")
def jobs_watch(
    job_id: Annotated[int, typer.Argument(help="The job's id.", callback=job_id)],
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between reads.")] = 1.0,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Give up after this many seconds (exit 1).",
            callback=number_option("--timeout", 0, 1e9),
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job's progress live until it finishes; exit 0 if it succeeded, 1 otherwise.

    Reads jobs.progress (total, processed, failed, rate, eta_s, checkpoint_at, message:
    what a chunked run or current_job().progress() reported). With --json, prints one JSON
    object per read.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with open_store() as store:
        job = store.job_get(job_id)
        if job is None:
            raise UnbrokenError(f"no job {job_id}")
        if as_json:
            while True:
                view = job.progress_view()
                typer.echo(
                    to_json(
                        {"id": job.id, "state": job.state, "attempt": job.attempt, "progress": view}
                    )
                )
                if job.final or (deadline is not None and time.monotonic() > deadline):
                    break
                time.sleep(interval)
                job = store.job_get(job_id) or job
        else:
            job = _watch_bar(store, job, interval, deadline)
    if job.state != JobState.SUCCEEDED:
        if not as_json:
            console.print(f"job {job.id} is {styled(job.state)}")
        raise typer.Exit(1)


def _watch_bar(
    store: OperatorStore, job: JobDetail, interval: float, deadline: float | None
) -> JobDetail:
    columns = (
        SpinnerColumn(finished_text="•"),
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console, expand=True) as bar:
        task_id = bar.add_task(f"job {job.id}", total=None, detail="")
        while True:
            view = job.progress_view()
            detail = f"{styled(job.state)}  " + (_progress_text(view) if view else "")
            total = view.total if view and view.total else None
            done = view.processed if view and view.processed is not None else 0
            if job.state == JobState.SUCCEEDED and total is None:
                total, done = 1, 1
            bar.update(
                task_id,
                total=total,
                completed=done,
                detail=detail,
                description=f"job {job.id} {escape(job.task)} (attempt {job.attempt})",
            )
            if job.final or (deadline is not None and time.monotonic() > deadline):
                bar.stop_task(task_id)
                return job
            time.sleep(interval)
            job = store.job_get(job.id) or job


@dataclass(frozen=True)
class BulkAction:
    """A job action by ids, or on every job a filter matches among the states it applies to
    (after a confirmation, in batches behind a progress bar)."""

    states: Sequence[JobState]
    verb: str  # asks: "Retry 12 job(s): ...?"
    doing: str  # the progress bar's label
    done: str  # reports: "retried 12 of 12 job(s)"
    why_not: str  # why a job it matched was skipped
    by_ids: Callable[[OperatorStore, list[int]], list[int]]
    matching: Callable[[OperatorStore, JobFilter, Callable[[int], None]], BulkResult]

    def run(self, ids: list[int], flt: JobFilter, yes: bool) -> BulkResult:
        if ids and flt != JobFilter():
            raise ConfigError("give job ids or filters, not both")
        with open_store() as store:
            if ids:
                done = self.by_ids(store, ids)
                return BulkResult(len(ids), len(done), done)
            flt = replace(flt, task=store.resolve_task(flt.task))
            scoped = flt.restricted_to(self.states)
            count = store.job_count(scoped)
            if count == 0:
                return BulkResult(0, 0, [])
            confirm(f"{self.verb} {count} job(s): {scoped.describe()}?", yes)
            return with_progress(self.doing, count, lambda p: self.matching(store, flt, p))

    def command(self) -> Callable[..., None]:
        """The Typer command: job ids, or the filter options."""

        def command(
            ids: Annotated[
                list[int] | None,
                typer.Argument(help="Job ids (else: use filters).", callback=job_ids),
            ] = None,
            state: StateOpt = None,
            queue: QueueOpt = None,
            task: TaskOpt = None,
            older_than: OlderOpt = None,
            args: ArgsOpt = None,
            yes: YesOpt = False,
            as_json: JsonOpt = False,
        ) -> None:
            result = self.run(ids or [], _filter(state, queue, task, older_than, args), yes)
            report(result, self.done, self.why_not, as_json)

        return command


RETRY = BulkAction(
    RETRYABLE_STATES,
    "Retry",
    "retrying",
    "retried",
    "not dead or cancelled (or a live job holds its unique key)",
    lambda store, ids: store.job_retry(ids),
    lambda store, flt, p: store.job_retry_matching(flt, progress=p),
)
CANCEL = BulkAction(
    CANCELLABLE_STATES,
    "Cancel",
    "cancelling",
    "cancelled",
    "already finished",
    lambda store, ids: [change.id for change in store.job_cancel(ids)],
    lambda store, flt, p: store.job_cancel_matching(flt, progress=p),
)
jobs_app.command(
    "retry",
    help="Put dead or cancelled jobs back in line now (by id, or every one a filter matches).",
)(RETRY.command())
jobs_app.command(
    "cancel", help="Cancel waiting jobs; running ones are asked to stop at their next heartbeat."
)(CANCEL.command())
