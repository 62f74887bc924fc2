"""`unbroken schedules ls`: the periodic tasks' schedules, their next and latest tick, and
how many missed ticks the catch-up policy skipped."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.markup import escape
from rich.table import Table

from unbroken.cli.output import JsonOpt, console, emit_json, open_store, styled
from unbroken.states import JobState

schedules_app = typer.Typer(help="Periodic tasks: schedules, next run, last run.")


def register(app: typer.Typer) -> None:
    app.add_typer(schedules_app, name="schedules")


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.isoformat(sep=" ")


@schedules_app.command("ls")
def schedules_ls(as_json: JsonOpt = False) -> None:
    """Each schedule: cron, time zone, catch-up policy, next run, last run and its job."""
    with open_store() as store:
        rows = store.schedule_list()
    if as_json:
        emit_json({"schedules": rows})
        return
    if not rows:
        console.print("no schedules yet (a worker registers its app's periodic tasks)")
        return
    table = Table(title="schedules", title_justify="left")
    for col in ("name", "cron", "tz", "catch up", "next run", "last run", "last job", "missed"):
        table.add_column(col, justify="right" if col == "missed" else "left")
    for s in rows:
        job = "-"
        if s.last_job_id is not None:
            state = styled(JobState(s.last_job_state)) if s.last_job_state else "pruned"
            job = f"{s.last_job_id} {state}"
        table.add_row(
            escape(s.name),
            escape(s.cron),
            escape(s.tz),
            escape(s.catch_up),
            _when(s.next_run),
            _when(s.last_run),
            job,
            str(s.missed),
        )
    console.print(table)
