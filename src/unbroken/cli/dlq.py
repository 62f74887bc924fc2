"""`unbroken dlq ls|retry|purge`: dead letters (jobs that will not run again), grouped by
queue, task, error type and message; a group's key names it for retry and purge."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from unbroken.cli.output import (
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
    with_progress,
)
from unbroken.errors import ConfigError
from unbroken.ops.filters import parse_duration
from unbroken.ops.format import format_age
from unbroken.ops.rows import BulkResult

dlq_app = typer.Typer(
    help="Dead letters (jobs that will not run again), grouped by error.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")


@dlq_app.command("ls")
def dlq_ls(
    queue: QueueOpt = None,
    task: TaskOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Groups to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Dead jobs grouped by queue, task, error type and message, largest group first."""
    with open_store() as store:
        task = store.resolve_task(task)
        groups = store.dead_letter_groups(queue=queue, task=task, limit=limit)
        matching = store.dead_letter_count(queue=queue, task=task)
    shown = sum(g.jobs for g in groups)
    if as_json:  # jobs: in the groups shown; matching: every dead job the filters match
        emit_json({"groups": groups, "jobs": shown, "matching": matching})
        return
    what = " ".join(f"{k}={v}" for k, v in (("queue", queue), ("task", task)) if v)
    what = f" matching {escape(what)}" if what else ""
    if not groups:
        console.print(f"no dead letters{what}")
        return
    if shown < matching:
        largest = "the largest group" if len(groups) == 1 else f"the {len(groups)} largest groups"
        console.print(
            f"showing {shown:,} of {matching:,} dead job(s){what} ({largest}; --limit for more)"
        )
    else:
        console.print(f"{matching:,} dead job(s){what}")
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
            f"[red]{escape(g.error_type)}[/]: {cell(g.message, 200)}",
            format_age(since(g.last_at)),
            ", ".join(map(str, g.sample_ids)) + ("…" if g.jobs > len(g.sample_ids) else ""),
        )
    show_table(table, keep=("key", "queue / task"))
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
        task = store.resolve_task(task)
        count = sum(store.dead_letter_count(k, queue=queue, task=task) for k in targets)
        if count:
            confirm(f"Retry {count} dead job(s)?", yes)
        result = _for_each_group(
            "retrying",
            targets,
            lambda key: store.dead_letter_count(key, queue=queue, task=task),
            lambda key, p: store.dead_letter_retry(key, queue=queue, task=task, progress=p),
        )
    report(
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
        task = store.resolve_task(task)
        count = sum(
            store.dead_letter_count(k, queue=queue, task=task, older_than=age) for k in targets
        )
        if count:
            confirm(f"Delete {count} dead job(s) for good?", yes)
        result = _for_each_group(
            "purging",
            targets,
            lambda key: store.dead_letter_count(key, queue=queue, task=task, older_than=age),
            lambda key, p: store.dead_letter_purge(
                key, queue=queue, task=task, older_than=age, progress=p
            ),
        )
    report(result, "purged", "changed state meanwhile", as_json)


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
            results.append(with_progress(f"{verb} {key or 'all'}", n, partial(act, key)))
    ids = [i for r in results for i in r.ids]
    return BulkResult(sum(r.matched for r in results), sum(r.changed for r in results), ids[:1000])
