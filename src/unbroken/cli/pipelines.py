"""`unbroken pipelines ls|show|drop-slot`: CDC pipelines (unbroken.cdc) with their state,
position, slot lag and retained WAL, as their workers last wrote them; dropping a
pipeline's replication slot on its source so the source stops keeping WAL for it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from unbroken.cli.inputs import text_option
from unbroken.cli.output import (
    JsonOpt,
    YesOpt,
    cell,
    confirm,
    console,
    emit_json,
    open_store,
    show_table,
    since,
)
from unbroken.errors import ConfigError
from unbroken.ops.format import format_age, format_bytes
from unbroken.ops.rows import PipelineDetail, PipelineInfo
from unbroken.ops.source_slot import slot_drop, without_mask
from unbroken.ops.store import OperatorStore
from unbroken.settings import load_settings

pipelines_app = typer.Typer(
    help="CDC pipelines: state, position, slot lag, retained WAL; drop a pipeline's slot.",
    no_args_is_help=True,
)
STATE_STYLE = {
    "streaming": "green",
    "snapshotting": "cyan",
    "waiting": "yellow",
    "failed": "bold red",
    "stopped": "dim",
}
NameArg = Annotated[str, typer.Argument(help="The pipeline's name.")]
SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        envvar="UNBROKEN_CDC_SOURCE_URL",
        help="The source database's URL with its password (default: the pipeline's stored "
        "URL, which has none: libpq may find it in PGPASSWORD or ~/.pgpass).",
        callback=text_option("--source"),
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(pipelines_app, name="pipelines")


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{escape(state)}[/]"


def lag(p: PipelineInfo) -> str:
    """'1.5 MiB / 3s' behind the source, or '-' when the worker has not measured it."""
    if p.lag_bytes is None and p.lag_seconds is None:
        return "-"
    return f"{format_bytes(p.lag_bytes)} / {format_age(p.lag_seconds)}"


@pipelines_app.command("ls")
def pipelines_ls(as_json: JsonOpt = False) -> None:
    """Every pipeline: state, position, lag (bytes / seconds), retained WAL, changes."""
    with open_store() as store:
        rows = store.pipeline_list()
    if as_json:
        emit_json({"pipelines": rows})
        return
    if not rows:
        console.print("no pipelines yet")
        return
    table = Table(title="pipelines", title_justify="left")
    for col in ("pipeline", "state", "position", "lag", "retained WAL", "changes", "updated"):
        table.add_column(col, justify="right" if col in ("changes", "updated") else "left")
    for p in rows:
        table.add_row(
            escape(p.name),
            styled(p.state),
            p.position or "-",
            lag(p),
            format_bytes(p.retained_wal_bytes),
            f"{p.changes:,}",
            _ago(p.updated_at),
        )
    show_table(table, keep=("pipeline", "state"))
    for p in rows:
        if p.state == "failed" and p.last_error:
            first = (p.last_error.strip().splitlines() or [""])[0]  # the rest: `pipelines show`
            console.print(f"[red]{escape(p.name)}[/]: {cell(first, 300)}")


def _found(store: OperatorStore, name: str) -> PipelineDetail:
    detail = store.pipeline_get(name)
    if detail is None:
        known = ", ".join(p.name for p in store.pipeline_list()) or "none yet"
        raise ConfigError(f"no pipeline {name!r} (known: {known})")
    return detail


@pipelines_app.command("show")
def pipelines_show(name: NameArg, as_json: JsonOpt = False) -> None:
    """One pipeline: source, slot, tables, position and lag, dead letters, schema changes."""
    with open_store() as store:
        p = _found(store, name)
    if as_json:
        emit_json(p)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [
        ("state", styled(p.state)),
        ("source", escape(p.source)),
        ("slot / publication", f"{escape(p.slot_name)} / {escape(p.publication)}"),
        ("tables", escape(", ".join(p.tables))),
        ("position", p.position or "- (nothing committed yet)"),
        ("lag (bytes / time)", lag(p)),
        ("retained WAL", format_bytes(p.retained_wal_bytes)),
        ("changes", f"{p.changes:,}"),
        ("updated", _ago(p.updated_at)),
        ("dead letters", f"{p.dead_letters:,}"),
        ("schema changes", f"{p.schema_changes:,}"),
    ]
    if p.last_error:
        rows.append(("last error", f"[red]{escape(p.last_error)}[/]"))
    for key, value in rows:
        grid.add_row(key, value)
    console.print(f"[bold]pipeline {escape(p.name)}[/]")
    console.print(grid)
    changes = [
        [
            escape(c.relation),
            c.lsn or "-",
            cell(c.before, 80),
            cell(c.after, 80),
            _ago(c.created_at),
        ]
        for c in p.recent_schema_changes
    ]
    _recent("schema changes", ("relation", "lsn", "before", "after", "when"), changes)
    dead = [
        [str(d.id), escape(d.relation or "-"), d.lsn or "-", cell(d.error, 120), _ago(d.created_at)]
        for d in p.recent_dead_letters
    ]
    _recent("dead letters", ("id", "relation", "lsn", "error", "when"), dead)


def _ago(at: datetime) -> str:
    return f"{format_age(since(at))} ago"


def _recent(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    """A table of a pipeline's newest schema changes or dead letters, when it has any."""
    if not rows:
        return
    table = Table(title=f"{title} (newest first)", title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    show_table(table, keep=columns[:1])


@pipelines_app.command("drop-slot")
def pipelines_drop_slot(
    name: NameArg, source: SourceOpt = None, yes: YesOpt = False, as_json: JsonOpt = False
) -> None:
    """Drop the pipeline's replication slot on its source and mark the pipeline stopped.

    The source then keeps no WAL for it; the pipeline's position no longer has a slot to
    resume from (a new start re-snapshots its tables).
    """
    settings = load_settings()
    with open_store() as store:
        p = _found(store, name)
        confirm(f"Drop replication slot {p.slot_name!r} of pipeline {p.name!r} on {p.source}?", yes)
        existed = slot_drop(source or without_mask(p.source), p, settings)
        reason = "replication slot dropped by `unbroken pipelines drop-slot`"
        store.pipeline_mark_stopped(p.name, reason)
    if as_json:
        emit_json({"pipeline": p.name, "slot": p.slot_name, "dropped": existed, "state": "stopped"})
        return
    what = "dropped" if existed else "was not there (nothing to drop)"
    console.print(f"slot {escape(p.slot_name)} {what}; pipeline {escape(p.name)} stopped")
