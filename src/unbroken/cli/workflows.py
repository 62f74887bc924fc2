"""`unbroken workflows ls|show ID|cancel ID`: workflows, their steps and their states."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from unbroken.cli.output import JsonOpt, confirm, console, emit_json, open_store, styled
from unbroken.errors import ConfigError
from unbroken.states import JobState

workflows_app = typer.Typer(help="Workflows: their steps, states and dependencies; cancel one.")
IdArg = Annotated[int, typer.Argument(help="The workflow's id (`unbroken workflows ls`).")]


def register(app: typer.Typer) -> None:
    app.add_typer(workflows_app, name="workflows")


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.isoformat(sep=" ", timespec="seconds")


@workflows_app.command("ls")
def workflows_ls(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The newest workflows: steps succeeded, failed and live, and the workflow's state."""
    with open_store() as store:
        rows = store.workflow_list(limit=limit)
    if as_json:
        emit_json({"workflows": [{**vars(r), "state": r.state} for r in rows]})
        return
    if not rows:
        console.print("no workflows")
        return
    table = Table(title="workflows", title_justify="left")
    for col in ("id", "name", "state", "steps", "succeeded", "failed", "live", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r.id),
            escape(r.name),
            r.state,
            str(r.steps),
            str(r.succeeded),
            str(r.failed),
            str(r.live),
            _when(r.created_at),
        )
    console.print(table)


@workflows_app.command("show")
def workflows_show(workflow_id: IdArg, as_json: JsonOpt = False) -> None:
    """A workflow's steps in order: state, attempts and the jobs each waits for."""
    with open_store() as store:
        found = store.workflow_get(workflow_id)
    if found is None:
        raise ConfigError(f"no workflow {workflow_id} (pruned, or never written)")
    name, steps = found
    if as_json:
        emit_json({"id": workflow_id, "name": name, "steps": steps})
        return
    table = Table(title=f"workflow {workflow_id} {escape(name)}", title_justify="left")
    for col in ("job", "task", "state", "attempt", "after", "finished"):
        table.add_column(col)
    for s in steps:
        after = ", ".join(str(i) for i in s.after) or "-"
        if s.run_anyway:
            after += " (run anyway)"
        table.add_row(
            str(s.id),
            escape(s.task),
            styled(JobState(s.state)),
            f"{s.attempt}/{s.max_attempts}",
            after,
            _when(s.finished_at),
        )
    console.print(table)


@workflows_app.command("cancel")
def workflows_cancel(
    workflow_id: IdArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a workflow: waiting steps at once, running ones at their next heartbeat."""
    confirm(f"cancel workflow {workflow_id}?", yes or as_json)
    with open_store() as store:
        if store.workflow_get(workflow_id) is None:
            raise ConfigError(f"no workflow {workflow_id} (pruned, or never written)")
        changed = store.workflow_cancel(workflow_id)
    if as_json:
        emit_json({"id": workflow_id, "changed": changed})
        return
    asked = sum(1 for c in changed if c.state == JobState.RUNNING)
    console.print(
        f"workflow {workflow_id}: {len(changed) - asked} jobs cancelled, "
        f"{asked} running asked to stop"
    )
