"""`unbroken queues [pause|resume]`: each queue's backlog by state and priority, its oldest
waiting job; pausing stops workers fetching from it (running jobs finish)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from unbroken.cli.inputs import queue_name
from unbroken.cli.output import JsonOpt, console, emit_json, err, open_store, show_table
from unbroken.ops.format import format_age

queues_app = typer.Typer(help="Queues: backlog by priority, oldest waiting job; pause, resume.")


def register(app: typer.Typer) -> None:
    app.add_typer(queues_app, name="queues")


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
    show_table(table, keep=("queue",))


def _set_paused(name: str, paused: bool, as_json: bool) -> None:
    """Pause or resume; a queue nothing has used is likely a typo: one warning line on stderr,
    and the pause is kept all the same (a queue may be paused before its first job)."""
    with open_store() as store:
        if not store.queue_in_use(name):
            known = ", ".join(q.name for q in store.queue_list()) or "none yet"
            err.print(
                f"[yellow]warning:[/] queue {escape(repr(name))} has no jobs and no worker "
                f"fetches from it: {'paused' if paused else 'resumed'} all the same "
                f"(known: {escape(known)})",
                soft_wrap=True,
            )
        store.queue_set_paused(name, paused)
    if as_json:
        emit_json({"queue": name, "paused": paused})
    else:
        console.print(f"queue {escape(name)} {'paused' if paused else 'resumed'}")


@queues_app.command("pause")
def queues_pause(
    name: Annotated[str, typer.Argument(help="The queue.", callback=queue_name)],
    as_json: JsonOpt = False,
) -> None:
    """Stop workers from fetching jobs from this queue (running jobs finish)."""
    _set_paused(name, True, as_json)


@queues_app.command("resume")
def queues_resume(
    name: Annotated[str, typer.Argument(help="The queue.", callback=queue_name)],
    as_json: JsonOpt = False,
) -> None:
    """Let workers fetch from this queue again."""
    _set_paused(name, False, as_json)
