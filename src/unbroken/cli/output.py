"""What the operator commands (`jobs`, `dlq`, `queues`, `stats`, `stuck`, `workers`, `health`)
share: the store they open, their common options, and how they show results.

Each of them has `--json` (one JSON document on stdout; `jobs watch --json` prints one per
line) for scripts, and a table otherwise (`show_table`): rich on a terminal, plain aligned
lines, one row per line, when piped. Bulk actions over a filter say how many jobs
they will touch and ask first, or take `--yes`; without a terminal to ask on they refuse.
Status lines and progress go to stderr, so stdout stays clean for pipes. Values are
formatted by unbroken.ops.format, as the dashboard formats them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import psycopg
import typer
from rich import box
from rich.cells import cell_len
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
from rich.table import Table
from rich.text import Text

from unbroken.cli.inputs import text_option
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
console.soft_wrap = not console.is_terminal  # piped: a line stays one line, whatever COLUMNS
err = Console(stderr=True, highlight=False)

STATE_STYLE = {
    JobState.PENDING: "blue dim",
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
QueueOpt = Annotated[
    str | None,
    typer.Option("--queue", "-q", help="Only this queue.", callback=text_option("--queue")),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task",
        "-t",
        help="Only this task: its full name, or the end after a dot (send_welcome).",
        callback=text_option("--task"),
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
    except psycopg.errors.InsufficientPrivilege as exc:
        role = store.session_role()
        raise UnbrokenError(
            f"{str(exc).strip().splitlines()[0]} (role {role}): grant it what docs/security.md "
            "lists for its use"
        ) from None
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


# --- tables -------------------------------------------------------------------------------
KEEP = ("id", "state", "task")  # what a narrow terminal shows whole, whatever else it cuts
MIN_CELL = 6  # the narrowest a cut column gets on a narrow terminal ("abcd…")
GAP = 3  # what rich puts between two columns of a table without edges


def show_table(table: Table, keep: Collection[str] = KEEP) -> None:
    """Print a table of rows where it goes.

    Piped (stdout not a terminal): plain lines, columns aligned by spaces, one row per
    line, nothing cut, wrapped or boxed (an empty cell is "-"), for grep, cut and awk.
    On a terminal wide enough: the rich table. On a narrower one: the `keep` columns
    (header names) get their full width, folded only when they alone overflow it; the
    others share the rest, each cell cut to one line with "…"; a column left no room is
    left out, and a last line says which.
    """
    headers = [_plain(c.header) for c in table.columns]
    rows = [[_plain(c) for c in column.cells] for column in table.columns]
    cells = [list(r) for r in zip(*rows, strict=True)] if rows else []
    if not console.is_terminal:
        _print_plain(table, headers, cells)
        return
    natural = [max([cell_len(h), *(cell_len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if sum(natural) + GAP * (len(natural) - 1) + 4 <= console.width:
        console.print(table)
        return
    widths = _fit(headers, natural, keep, console.width)
    narrow = Table(
        title=table.title,
        title_justify=table.title_justify,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    shown = [i for i, w in enumerate(widths) if w]
    for i in shown:
        column = table.columns[i]
        kept = headers[i] in keep
        narrow.add_column(
            column.header,
            justify=column.justify,
            width=widths[i],
            no_wrap=not kept,
            overflow="fold" if kept else "ellipsis",
        )
    for n, row in enumerate(table.rows):
        narrow.add_row(*(list(table.columns[i].cells)[n] for i in shown), style=row.style)
    console.print(narrow)
    hidden = [headers[i] for i, w in enumerate(widths) if not w]
    if hidden:
        console.print(f"[dim]not shown at this width: {escape(', '.join(hidden))} (or --json)[/]")


def _fit(headers: list[str], natural: list[int], keep: Collection[str], width: int) -> list[int]:
    """Column widths within `width` (0: left out): kept columns first, whole if they fit."""
    kept = [i for i, h in enumerate(headers) if h in keep]
    others = [i for i in range(len(headers)) if i not in kept]
    widths = [0] * len(headers)
    room = width
    for i in kept + others:
        need = natural[i] if i in kept else min(natural[i], MIN_CELL)
        gap = GAP if room < width else 0
        if i in kept:  # never left out: folded over lines when it cannot have its width
            widths[i] = max(1, min(need, room - gap))
        elif need + gap <= room:
            widths[i] = need
        room -= widths[i] + gap if widths[i] else 0
    for i in others:  # what is left widens the cut columns, left to right
        if widths[i]:
            more = min(natural[i] - widths[i], max(room, 0))
            widths[i] += more
            room -= more
    return widths


def _plain(value: Any) -> str:
    """A cell's text without markup or line breaks."""
    text = value.plain if isinstance(value, Text) else Text.from_markup(str(value)).plain
    return " ".join(text.split())


def _print_plain(table: Table, headers: list[str], cells: list[list[str]]) -> None:
    if table.title:
        typer.echo(_plain(table.title))
    lines = [headers, *([c or "-" for c in row] for row in cells)]
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        parts = [
            " " * (w - cell_len(c)) + c if col.justify == "right" else c + " " * (w - cell_len(c))
            for c, w, col in zip(line, widths, table.columns, strict=True)
        ]
        typer.echo("  ".join(parts).rstrip())
