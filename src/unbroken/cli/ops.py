"""Operator commands: `jobs`, `dlq`, `queues`, `stats`, `stuck`, `workers`, `health`.

Every command has `--json` (one JSON document on stdout; `jobs watch --json` prints one per
line) for scripts, and a rich table otherwise. Bulk actions over a filter say how many jobs
they will touch and ask first, or take `--yes`; without a terminal to ask on they refuse.
Status lines and progress go to stderr, so stdout stays clean for pipes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from unbroken.db._sync.pool import Database
from unbroken.db.target import resolve_target
from unbroken.errors import ConfigError, DatabaseUnavailable, EmbeddedServerError, UnbrokenError
from unbroken.ops import health as health_mod
from unbroken.ops.filters import JobFilter, parse_duration
from unbroken.ops.format import format_age, shown_json, to_json
from unbroken.ops.rows import BulkResult, JobDetail, ProgressView
from unbroken.ops.store import CANCELLABLE_STATES, RETRYABLE_STATES, OperatorStore
from unbroken.settings import load_settings
from unbroken.states import JobState

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_STYLE = {
    "scheduled": "blue",
    "available": "cyan",
    "running": "yellow",
    "retryable": "magenta",
    "succeeded": "green",
    "dead": "bold red",
    "cancelled": "dim",
}

jobs_app = typer.Typer(help="List, inspect, watch, retry and cancel jobs.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="Dead letters (jobs that will not run again), grouped by error.", no_args_is_help=True
)
queues_app = typer.Typer(help="Queues: backlog by priority, oldest waiting job; pause, resume.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
StateOpt = Annotated[
    str | None,
    typer.Option("--state", "-s", help="State(s), comma-separated: available,running,dead,..."),
]
QueueOpt = Annotated[str | None, typer.Option("--queue", "-q", help="Only this queue.")]
TaskOpt = Annotated[str | None, typer.Option("--task", "-t", help="Only this task.")]
OlderOpt = Annotated[
    str | None, typer.Option("--older-than", help="Created longer ago than this (30s, 5m, 2h, 1d).")
]
ArgsOpt = Annotated[
    str | None,
    typer.Option(
        "--args",
        help="Arguments: a JSON object matches by containment ('{\"user\": 5}'), "
        "other text by substring.",
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(queues_app, name="queues")
    app.command("stats")(stats)
    app.command("stuck")(stuck)
    app.command("workers")(workers)
    app.command("health")(health)


# --- plumbing -------------------------------------------------------------------------------
@contextmanager
def open_store(require_schema: bool = True, **overrides: Any) -> Iterator[OperatorStore]:
    """The configured (or embedded) database behind a one-connection pool."""
    settings = load_settings(**overrides)
    with err.status("connecting to the database…", spinner="dots"):
        target = resolve_target(settings)
        database = Database(target.conninfo, settings)
        pool = database.pool("cli", min_size=0, max_size=1)
        database.open("cli")
    try:
        store = OperatorStore(pool, settings.schema_name)
        if require_schema and store.schema_version() is None:
            raise UnbrokenError(
                f"no unbroken schema {settings.schema_name!r} in {target.describe()}: "
                "run `unbroken db migrate` (workers also migrate when they start)"
            )
        yield store
    finally:
        database.close()


def emit_json(value: Any) -> None:
    typer.echo(to_json(value, indent=2))


def _filter(
    state: str | None, queue: str | None, task: str | None, older: str | None, args: str | None
) -> JobFilter:
    return JobFilter.build(state=state, queue=queue, task=task, older_than=older, args=args)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} — not confirmed: no terminal to ask on; pass --yes")
    if not typer.confirm(question, default=False, err=True):
        raise typer.Exit(1)


def _with_progress(label: str, total: int, run: Callable[[Callable[[int], None]], Any]) -> Any:
    """Run a batched action with a progress bar on stderr (silent when not a terminal)."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task_id = bar.add_task(label, total=total)
        return run(lambda n: bar.advance(task_id, n))


def _now() -> datetime:
    return datetime.now(UTC)


def _since(at: datetime | None) -> float | None:
    return None if at is None else (_now() - at).total_seconds()


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]"


def _clip(text: Any, width: int) -> str:
    shown = text if isinstance(text, str) else json.dumps(text, separators=(",", ":"))
    shown = shown.replace("\n", " ")
    return escape(shown if len(shown) <= width else shown[: width - 1] + "…")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


# --- jobs -------------------------------------------------------------------------------------
@jobs_app.command("ls")
def jobs_ls(
    state: StateOpt = None,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    args: ArgsOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Rows to show.")] = 50,
    before: Annotated[
        int | None, typer.Option(help="Only ids below this one (the next page).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first, filtered by state, queue, task, age or arguments."""
    flt = _filter(state, queue, task, older_than, args)
    with open_store() as store:
        rows = store.job_list(flt, limit=limit, before_id=before)
        counts = store.state_counts() if not as_json else []
    if as_json:
        emit_json({"filter": flt.describe(), "jobs": rows})
        return
    totals: dict[str, int] = {}
    for c in counts:
        totals[c.state] = totals.get(c.state, 0) + c.jobs
    console.print(
        "  ".join(f"{_state(s)} {totals[s]}" for s in STATE_STYLE if s in totals) or "no jobs"
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
            _state(j.state),
            escape(j.queue),
            escape(j.task),
            f"{j.attempt}/{j.max_attempts}",
            format_age(_since(j.created_at)),
            _clip(j.args, 40),
            _clip(error, 50),
        )
    console.print(table)
    if len(rows) == limit:
        console.print(f"[dim]more: --before {rows[-1].id}[/]")


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
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
        ("state", _state(job.state) + (" (cancel requested)" if job.cancel_requested else "")),
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
        rows.append(("checkpoint", _clip(job.checkpoint, 200)))
    if job.result is not None:
        rows.append(("result", _clip(job.result, 200)))
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
    return "  ".join(parts) or "-"


@jobs_app.command("watch")
def jobs_watch(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between reads.")] = 1.0,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (exit 1).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job's progress live until it finishes; exit 0 if it succeeded, 1 otherwise.

    Reads jobs.progress (total, processed, failed, rate, eta_s, checkpoint_at; whatever the
    task wrote). With --json, prints one JSON object per read.
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
    if job.state != "succeeded":
        if not as_json:
            console.print(f"job {job.id} is {_state(job.state)}")
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
            detail = f"{_state(job.state)}  " + (_progress_text(view) if view else "")
            total = view.total if view and view.total else None
            done = view.processed if view and view.processed is not None else 0
            if job.state == "succeeded" and total is None:
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


def _ids_or_filter(ids: Sequence[int], flt: JobFilter) -> None:
    if ids and flt != JobFilter():
        raise ConfigError("give job ids or filters, not both")


@jobs_app.command("retry")
def jobs_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Job ids (else: use filters).")] = None,
    state: StateOpt = None,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    args: ArgsOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead or cancelled jobs back in line now (by id, or every one a filter matches)."""
    result = _by_ids_or_filter(
        ids or [],
        _filter(state, queue, task, older_than, args),
        RETRYABLE_STATES,
        "Retry",
        "retrying",
        lambda store, job_ids: store.job_retry(job_ids),
        lambda store, flt, p: store.job_retry_matching(flt, progress=p),
        yes,
    )
    _report(
        result, "retried", "not dead or cancelled (or a live job holds its unique key)", as_json
    )


@jobs_app.command("cancel")
def jobs_cancel(
    ids: Annotated[list[int] | None, typer.Argument(help="Job ids (else: use filters).")] = None,
    state: StateOpt = None,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    older_than: OlderOpt = None,
    args: ArgsOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cancel waiting jobs; running ones are asked to stop at their next heartbeat."""
    result = _by_ids_or_filter(
        ids or [],
        _filter(state, queue, task, older_than, args),
        CANCELLABLE_STATES,
        "Cancel",
        "cancelling",
        lambda store, job_ids: [c.id for c in store.job_cancel(job_ids)],
        lambda store, flt, p: store.job_cancel_matching(flt, progress=p),
        yes,
    )
    _report(result, "cancelled", "already finished", as_json)


def _by_ids_or_filter(
    ids: list[int],
    flt: JobFilter,
    states: Sequence[JobState],
    verb: str,
    doing: str,
    by_ids: Callable[[OperatorStore, list[int]], list[int]],
    matching: Callable[[OperatorStore, JobFilter, Callable[[int], None]], BulkResult],
    yes: bool,
) -> BulkResult:
    """A bulk action on the given ids, or (after a confirmation) on every job the filter
    matches among `states`, in batches behind a progress bar."""
    _ids_or_filter(ids, flt)
    with open_store() as store:
        if ids:
            done = by_ids(store, ids)
            return BulkResult(len(ids), len(done), done)
        scoped = flt.restricted_to(states)
        count = store.job_count(scoped)
        if count == 0:
            return BulkResult(0, 0, [])
        _confirm(f"{verb} {count} job(s): {scoped.describe()}?", yes)
        return _with_progress(doing, count, lambda p: matching(store, flt, p))  # type: ignore[no-any-return]


def _report(result: BulkResult, verb: str, why_not: str, as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    console.print(f"{verb} {result.changed} of {result.matched} job(s)")
    if result.changed < result.matched:
        console.print(f"[dim]{result.matched - result.changed} skipped: {why_not}[/]")


# --- dead letters -----------------------------------------------------------------------------
@dlq_app.command("ls")
def dlq_ls(
    queue: QueueOpt = None,
    task: TaskOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Groups to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Dead jobs grouped by queue, task, error type and message, largest group first."""
    with open_store() as store:
        groups = store.dead_letter_groups(queue=queue, task=task, limit=limit)
    if as_json:
        emit_json({"groups": groups, "jobs": sum(g.jobs for g in groups)})
        return
    if not groups:
        console.print("no dead letters")
        return
    table = Table(title="dead letters by error", title_justify="left")
    table.add_column("key")
    table.add_column("jobs", justify="right")
    table.add_column("queue / task")
    table.add_column("error", overflow="fold", max_width=70)
    table.add_column("last", justify="right")
    table.add_column("ids")
    for g in groups:
        table.add_row(
            g.key,
            str(g.jobs),
            f"{escape(g.queue)} / {escape(g.task)}",
            f"[red]{escape(g.error_type)}[/]: {_clip(g.message, 200)}",
            format_age(_since(g.last_at)),
            ", ".join(map(str, g.sample_ids)) + ("…" if g.jobs > len(g.sample_ids) else ""),
        )
    console.print(table)
    console.print("[dim]retry or purge a group: unbroken dlq retry KEY / unbroken dlq purge KEY[/]")


def _dlq_targets(
    keys: Sequence[str], every: bool, queue: str | None, task: str | None
) -> list[str | None]:
    if keys and every:
        raise ConfigError("give group keys or --all, not both")
    if not keys and not every and queue is None and task is None:
        raise ConfigError("name the group(s) to act on (keys from `unbroken dlq ls`), or --all")
    return list(keys) if keys else [None]


@dlq_app.command("retry")
def dlq_retry(
    keys: Annotated[list[str] | None, typer.Argument(help="Group keys from `dlq ls`.")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every dead job (with the filters).")
    ] = False,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Retry dead letters: the jobs of one or more groups, or all of them."""
    targets = _dlq_targets(keys or [], every, queue, task)
    with open_store() as store:
        count = sum(store.dead_letter_count(k, queue=queue, task=task) for k in targets)
        if count:
            _confirm(f"Retry {count} dead job(s)?", yes)
        result = _for_each_group(
            "retrying",
            targets,
            lambda key: store.dead_letter_count(key, queue=queue, task=task),
            lambda key, p: store.dead_letter_retry(key, queue=queue, task=task, progress=p),
        )
    _report(
        result,
        "retried",
        "changed state meanwhile, or a live job holds its unique key",
        as_json,
    )


@dlq_app.command("purge")
def dlq_purge(
    keys: Annotated[list[str] | None, typer.Argument(help="Group keys from `dlq ls`.")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every dead job (with the filters).")
    ] = False,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Only jobs dead for longer (7d, 12h).")
    ] = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters for good: one or more groups, or all (optionally only old ones)."""
    age = parse_duration(older_than) if older_than else None
    targets = _dlq_targets(keys or [], every or age is not None, queue, task)
    with open_store() as store:
        count = sum(
            store.dead_letter_count(k, queue=queue, task=task, older_than=age) for k in targets
        )
        if count:
            _confirm(f"Delete {count} dead job(s) for good?", yes)
        result = _for_each_group(
            "purging",
            targets,
            lambda key: store.dead_letter_count(key, queue=queue, task=task, older_than=age),
            lambda key, p: store.dead_letter_purge(
                key, queue=queue, task=task, older_than=age, progress=p
            ),
        )
    _report(result, "purged", "changed state meanwhile", as_json)


def _for_each_group(
    verb: str,
    targets: Sequence[str | None],
    count: Callable[[str | None], int],
    act: Callable[[str | None, Callable[[int], None]], BulkResult],
) -> BulkResult:
    """Act on each dead-letter group in turn, each with its own progress bar."""
    results = []
    for key in targets:
        if n := count(key):
            results.append(_with_progress(f"{verb} {key or 'all'}", n, partial(act, key)))
    ids = [i for r in results for i in r.ids]
    return BulkResult(sum(r.matched for r in results), sum(r.changed for r in results), ids[:1000])


# --- queues -----------------------------------------------------------------------------------
@queues_app.callback(invoke_without_command=True)
def queues(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Queues with their backlog by state and priority and their oldest waiting job."""
    if ctx.invoked_subcommand is not None:
        return
    with open_store() as store:
        rows = store.queue_list()
    if as_json:
        emit_json({"queues": rows})
        return
    if not rows:
        console.print("no queues yet")
        return
    table = Table(title="queues", title_justify="left")
    for col in (
        "queue",
        "priority",
        "available",
        "oldest wait",
        "scheduled",
        "retryable",
        "running",
        "dead",
    ):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for q in rows:
        name = escape(q.name) + (" [yellow](paused)[/]" if q.paused else "")
        table.add_row(
            name,
            "all",
            str(q.available),
            format_age(q.oldest_wait_s),
            str(q.scheduled),
            str(q.retryable),
            str(q.running),
            str(q.dead),
        )
        if len(q.priorities) > 1:
            for p in q.priorities:
                table.add_row(
                    "",
                    str(p.priority),
                    str(p.available),
                    format_age(p.oldest_wait_s),
                    "",
                    "",
                    "",
                    "",
                    style="dim",
                )
    console.print(table)


def _set_paused(name: str, paused: bool, as_json: bool) -> None:
    with open_store() as store:
        store.queue_set_paused(name, paused)
    if as_json:
        emit_json({"queue": name, "paused": paused})
    else:
        console.print(f"queue {escape(name)} {'paused' if paused else 'resumed'}")


@queues_app.command("pause")
def queues_pause(
    name: Annotated[str, typer.Argument(help="The queue.")], as_json: JsonOpt = False
) -> None:
    """Stop workers from fetching jobs from this queue (running jobs finish)."""
    _set_paused(name, True, as_json)


@queues_app.command("resume")
def queues_resume(
    name: Annotated[str, typer.Argument(help="The queue.")], as_json: JsonOpt = False
) -> None:
    """Let workers fetch from this queue again."""
    _set_paused(name, False, as_json)


# --- stats, stuck, workers --------------------------------------------------------------------
def stats(
    window: Annotated[str, typer.Option(help="How far back (15m, 1h, 1d).")] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """Throughput, failure rate and duration (mean, p50/p95/p99) per task."""
    seconds = parse_duration(window)
    with open_store() as store:
        rows = store.task_stats(seconds)
    if as_json:
        emit_json({"window_s": seconds, "tasks": rows})
        return
    table = Table(title=f"last {format_age(seconds)}", title_justify="left")
    for col in (
        "queue",
        "task",
        "ok",
        "failed",
        "dead",
        "/min",
        "fail %",
        "mean",
        "p50",
        "p95",
        "p99",
    ):
        table.add_column(col, justify="left" if col in ("queue", "task") else "right")
    for r in rows:
        rate_style = "red" if (r.failure_rate or 0) >= 0.1 else "default"
        table.add_row(
            escape(r.queue),
            escape(r.task),
            f"{r.succeeded:,}",
            f"{r.failed:,}",
            f"{r.dead:,}",
            f"{r.per_minute:,.1f}",
            f"[{rate_style}]{_pct(r.failure_rate)}[/]",
            _secs(r.avg_s),
            _secs(r.p50_s),
            _secs(r.p95_s),
            _secs(r.p99_s),
        )
    console.print(table if rows else "no finished attempts in this window")


def stuck(
    longer_than: Annotated[
        str, typer.Option("--longer-than", help="Also list jobs running longer than this.")
    ] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """Running jobs whose lease expired (a dead worker) or that run longer than a threshold."""
    seconds = parse_duration(longer_than)
    with open_store() as store:
        rows = store.stuck_jobs(seconds)
    if as_json:
        emit_json({"longer_than_s": seconds, "jobs": rows})
        return
    if not rows:
        console.print("no stuck jobs")
        return
    table = Table(title="stuck jobs", title_justify="left")
    for col in ("id", "queue / task", "try", "running", "why", "worker", "heartbeat"):
        table.add_column(col)
    for j in rows:
        why = (
            f"[red]lease expired {format_age(j.lease_overdue_s)} ago[/]"
            if j.reason == "lease_expired"
            else f"[yellow]running over {format_age(seconds)}[/]"
        )
        beat = (
            "unregistered" if j.heartbeat_age_s is None else f"{format_age(j.heartbeat_age_s)} ago"
        )
        table.add_row(
            str(j.id),
            f"{escape(j.queue)} / {escape(j.task)}",
            f"{j.attempt}/{j.max_attempts}",
            format_age(j.running_s),
            why,
            escape(j.worker_id or "-"),
            beat,
        )
    console.print(table)


def workers(
    silent_after: Annotated[
        str, typer.Option("--silent-after", help="Flag workers without a heartbeat this long.")
    ] = "60s",
    as_json: JsonOpt = False,
) -> None:
    """Registered workers: queues, concurrency, current jobs and last heartbeat."""
    seconds = parse_duration(silent_after)
    with open_store() as store:
        rows = store.worker_list(seconds)
    if as_json:
        emit_json({"workers": rows})
        return
    if not rows:
        console.print("no workers registered")
        return
    table = Table(title="workers", title_justify="left")
    for col in ("worker", "queues", "busy", "jobs", "heartbeat", "up"):
        table.add_column(col)
    for w in rows:
        beat = format_age(w.heartbeat_age_s) + " ago"
        table.add_row(
            escape(w.id),
            escape(", ".join(w.queues)),
            f"{w.running}/{w.concurrency}",
            _clip(", ".join(map(str, w.job_ids)) or "-", 40),
            f"[red]{beat} (silent)[/]" if w.silent else f"[green]{beat}[/]",
            format_age(_since(w.started_at)),
        )
    console.print(table)


# --- health -----------------------------------------------------------------------------------
def health(
    ready: Annotated[
        bool, typer.Option("--ready", help="Probe: exit 0 when ready to serve, else 1.")
    ] = False,
    live: Annotated[
        bool, typer.Option("--live", help="Probe: exit 0 when the database answers, else 1.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the database.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Health score with its reasons (exit 1 when unhealthy); --ready/--live for probes."""
    overrides = {"startup_wait": 0, "connect_timeout": max(1, int(timeout))}
    try:
        with open_store(require_schema=False, **overrides) as store:
            report = health_mod.check(store)
    except (DatabaseUnavailable, EmbeddedServerError, psycopg.Error) as exc:
        report = health_mod.HealthReport(
            0, "unhealthy", [health_mod.Reason("database", "critical", str(exc))], live=False
        )
    ok = report.live if live else report.ready if ready else report.status != "unhealthy"
    if as_json:
        emit_json(report.as_dict())
    elif live or ready:
        console.print(("live" if live else "ready") + (": yes" if ok else ": no"))
        for r in report.problems() if not ok else ():
            err.print(f"{r.level}: {escape(r.message)}")
    else:
        color = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}[report.status]
        console.print(f"[bold {color}]{report.status}[/]  score {report.score}/100")
        for r in report.reasons:
            mark = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "critical": "[red]✗[/]"}[r.level]
            console.print(f" {mark} {r.check:<14} {escape(r.message)}")
    if not ok:
        raise typer.Exit(1)


__all__ = ["register"]
