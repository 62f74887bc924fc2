"""`unbroken dlq ls|retry|purge`: dead letters (jobs that will not run again), grouped by
queue, task, error type and message; a group's key names it for retry and purge."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from unbroken.cli.inputs import group_keys, number_option
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
from unbroken.ops.filters import JobFilter, parse_duration
from unbroken.ops.format import format_age
from unbroken.ops.rows import BulkResult
from unbroken.ops.store import DEAD_SAMPLE, DeadLetterFilter, OperatorStore, Progress
from unbroken.states import JobState

dlq_app = typer.Typer(
    help="Dead letters (jobs that will not run again), grouped by error.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")


@dlq_app.command("ls")
def dlq_ls(
    queue: QueueOpt = None,
    task: TaskOpt = None,
    limit: Annotated[
        int, typer.Option(help="Groups to show.", callback=number_option("--limit", 1, 10_000))
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Dead jobs grouped by queue, task, error type and message, largest group first."""
    with open_store() as store:
        task = store.resolve_task(task)
        groups = store.dead_letter_groups(queue=queue, task=task, limit=limit)
        # Counted up to COUNT_CAP ("10,000+"), as the groups cover the newest DEAD_SAMPLE.
        dead = JobFilter(states=(JobState.DEAD,), queue=queue, task=task)
        matching = store.job_count_upto(dead)
    shown = sum(g.jobs for g in groups)
    if as_json:  # jobs: in the groups shown; matching: the dead jobs the filters match, capped
        emit_json({"groups": groups, "jobs": shown, "matching": matching})
        return
    what = " ".join(f"{k}={v}" for k, v in (("queue", queue), ("task", task)) if v)
    what = f" matching {escape(what)}" if what else ""
    if not groups:
        console.print(f"no dead letters{what}")
        return
    newest = f" of the newest {DEAD_SAMPLE:,}" if matching.kind == "at_least" else ""
    if shown < matching:
        largest = "the largest group" if len(groups) == 1 else f"the {len(groups)} largest groups"
        console.print(
            f"showing {shown:,} of {matching:,} dead job(s){what}"
            f" ({largest}{newest}; --limit for more)"
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


KeysArg = Annotated[
    list[str] | None, typer.Argument(help="Group keys from `dlq ls`.", callback=group_keys)
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead job (with the filters).")]
# A dead-letter action: OperatorStore.dead_letter_retry or dead_letter_purge.
Action = Callable[[OperatorStore, DeadLetterFilter, Progress], BulkResult]


@dlq_app.command("retry")
def dlq_retry(
    keys: KeysArg = None,
    every: AllOpt = False,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Retry dead letters: the jobs of one or more groups, or all of them."""
    flt = DeadLetterFilter(queue=queue, task=task)
    result = _act_on_groups(
        keys, every, flt, yes, "Retry {} dead job(s)?", "retrying", OperatorStore.dead_letter_retry
    )
    report(
        result,
        "retried",
        "changed state meanwhile, or a live job holds its unique key",
        as_json,
    )


@dlq_app.command("purge")
def dlq_purge(
    keys: KeysArg = None,
    every: AllOpt = False,
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
    flt = DeadLetterFilter(queue=queue, task=task, older_than=age)
    result = _act_on_groups(
        keys,
        every or age is not None,
        flt,
        yes,
        "Delete {} dead job(s) for good?",
        "purging",
        OperatorStore.dead_letter_purge,
    )
    report(result, "purged", "changed state meanwhile", as_json)


def _act_on_groups(
    keys: Sequence[str] | None,
    every: bool,
    flt: DeadLetterFilter,
    yes: bool,
    question: str,
    verb: str,
    act: Action,
) -> BulkResult:
    """Confirm, then act on each group named (or on every dead job the filter matches),
    each group with its own progress bar."""
    if keys and every:
        raise ConfigError("give group keys or --all, not both")
    if not keys and not every and flt.queue is None and flt.task is None:
        raise ConfigError("name the group(s) to act on (keys from `unbroken dlq ls`), or --all")
    results = []
    with open_store() as store:
        flt = replace(flt, task=store.resolve_task(flt.task))
        groups = [replace(flt, key=key) for key in keys] if keys else [flt]
        if count := sum(store.dead_letter_count(g) for g in groups):
            confirm(question.format(count), yes)
        for group in groups:
            if n := store.dead_letter_count(group):
                label = f"{verb} {group.key or 'all'}"
                results.append(with_progress(label, n, partial(act, store, group)))
    ids = [i for r in results for i in r.ids]
    return BulkResult(sum(r.matched for r in results), sum(r.changed for r in results), ids[:1000])
