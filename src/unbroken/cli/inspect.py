"""`unbroken stats|stuck|workers|health`: how the system is doing, read-only.

`health` is also a probe: `--ready` and `--live` answer with an exit code (0 yes, 1 no).
Readiness is whether this process can serve (database, schema, pool), not how the jobs
fare: see unbroken.ops.health.
"""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer
from rich.markup import escape
from rich.table import Table

from unbroken.cli.inputs import number_option
from unbroken.cli.output import (
    JsonOpt,
    cell,
    console,
    emit_json,
    err,
    open_store,
    show_table,
    since,
)
from unbroken.errors import DatabaseUnavailable, EmbeddedServerError
from unbroken.ops import health as health_mod
from unbroken.ops.filters import parse_duration
from unbroken.ops.format import format_age, format_duration, format_pct


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)
    app.command("stuck")(stuck)
    app.command("workers")(workers)
    app.command("health")(health)


def stats(
    window: Annotated[str, typer.Option(help="How far back (15m, 1h, 1d).")] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """Throughput and failure rate per task, with the run times (mean, p50/p95/p99, max)
    of the jobs that succeeded in the window."""
    seconds = parse_duration(window)
    with open_store() as store:
        rows = store.task_stats(seconds)
    if as_json:
        emit_json({"window_s": seconds, "tasks": rows})
        return
    if not rows:
        console.print(f"no finished attempts in the last {format_age(seconds)}")
        return
    title = (
        f"last {format_age(seconds)}: attempts from the per-minute counters; run times of "
        "the succeeded jobs timed (their last attempt), mean and percentiles of the same jobs"
    )
    table = Table(title=title, title_justify="left")
    for col in STATS_COLUMNS:
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
            f"[{rate_style}]{format_pct(r.failure_rate)}[/]",
            f"{r.timed:,}",
            format_duration(r.avg_s),
            format_duration(r.p50_s),
            format_duration(r.p95_s),
            format_duration(r.p99_s),
            format_duration(r.max_s),
        )
    show_table(table, keep=("queue", "task"))


STATS_COLUMNS = (
    "queue",
    "task",
    "ok",
    "failed",
    "dead",
    "/min",
    "fail %",
    "timed",
    "mean",
    "p50",
    "p95",
    "p99",
    "max",
)


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
    show_table(table, keep=("id", "queue / task"))


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
            cell(", ".join(map(str, w.job_ids)) or "-", 40),
            f"[red]{beat} (silent)[/]" if w.silent else f"[green]{beat}[/]",
            format_age(since(w.started_at)),
        )
    show_table(table, keep=("worker",))


def health(
    ready: Annotated[
        bool,
        typer.Option(
            "--ready",
            help="Probe: exit 0 when the database answers with the schema this version "
            "expects, else 1 (failing jobs do not count).",
        ),
    ] = False,
    live: Annotated[
        bool, typer.Option("--live", help="Probe: exit 0 when the database answers, else 1.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the database.", callback=number_option("--timeout", 1, 3600)
        ),
    ] = 5,
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
        for r in () if ok else report.problems() if live else report.readiness_problems():
            err.print(f"{r.level}: {escape(r.message)}")
    else:
        color = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}[report.status]
        console.print(f"[bold {color}]{report.status}[/]  score {report.score}/100")
        for r in report.reasons:
            mark = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "critical": "[red]✗[/]"}[r.level]
            console.print(f" {mark} {r.check:<14} {escape(r.message)}")
    if not ok:
        raise typer.Exit(1)
