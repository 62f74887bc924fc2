"""What the operator commands (`jobs`, `dlq`, `queues`, `stats`, `stuck`, `workers`, `health`)
share: the store they open, their common options, and how they show results.

Each of them has `--json` (one JSON document on stdout; `jobs watch --json` prints one per
line) for scripts, and a rich table otherwise. Bulk actions over a filter say how many jobs
they will touch and ask first, or take `--yes`; without a terminal to ask on they refuse.
Status lines and progress go to stderr, so stdout stays clean for pipes. Values are
formatted by unbroken.ops.format, as the dashboard formats them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from unbroken.db._sync.pool import Database
from unbroken.db.target import resolve_target
from unbroken.errors import ConfigError, UnbrokenError
from unbroken.ops.format import clip, shown_json, to_json
from unbroken.ops.rows import BulkResult
from unbroken.ops.store import OperatorStore
from unbroken.settings import load_settings
from unbroken.states import JobState

T = TypeVar("T")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_STYLE = {
    JobState.SCHEDULED: "blue",
    JobState.AVAILABLE: "cyan",
    JobState.RUNNING: "yellow",
    JobState.RETRYABLE: "magenta",
    JobState.SUCCEEDED: "green",
    JobState.DEAD: "bold red",
    JobState.CANCELLED: "dim",
}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
QueueOpt = Annotated[str | None, typer.Option("--queue", "-q", help="Only this queue.")]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task", "-t", help="Only this task: its full name, or the end after a dot (send_welcome)."
    ),
]


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


def confirm(question: str, yes: bool) -> None:
    """Go on when `yes`, or when the operator says so on a terminal; else stop."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} — not confirmed: no terminal to ask on; pass --yes")
    if not typer.confirm(question, default=False, err=True):
        raise typer.Exit(1)


def with_progress(label: str, total: int, run: Callable[[Callable[[int], None]], T]) -> T:
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


def report(result: BulkResult, verb: str, why_not: str, as_json: bool) -> None:
    """What a bulk action did: how many it changed of those it matched, and why not all."""
    if as_json:
        emit_json(result)
        return
    console.print(f"{verb} {result.changed} of {result.matched} job(s)")
    if result.changed < result.matched:
        console.print(f"[dim]{result.matched - result.changed} skipped: {why_not}[/]")


def since(at: datetime | None) -> float | None:
    """Seconds from `at` to now (this machine's clock)."""
    return None if at is None else (datetime.now(UTC) - at).total_seconds()


def styled(state: JobState) -> str:
    """A job state in its colour (rich markup)."""
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]"


def cell(value: Any, width: int) -> str:
    """A value on one line of at most `width` characters, safe as rich markup."""
    shown = value if isinstance(value, str) else shown_json(value, compact=True)
    return escape(clip(shown.replace("\n", " "), width))
