"""`unbroken prune`: delete finished jobs past a retention now, as the leader's pruner does.

The leader prunes by itself (docs/retention.md); this is for a backlog after a retention
change, a database whose workers are stopped, or a cron job with no workers at all. Only
finished jobs (succeeded, dead, cancelled) are ever deleted, in batches of short
transactions that skip rows another transaction holds, so workers running meanwhile are
never held up. `--dry-run` counts, per state, what it would delete.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from unbroken.cli.output import JsonOpt, YesOpt, confirm, console, emit_json, open_store
from unbroken.cli.output import with_progress as progress_bar
from unbroken.errors import ConfigError
from unbroken.ops.filters import job_states, parse_duration
from unbroken.ops.format import format_age
from unbroken.settings import load_settings
from unbroken.states import FINAL, JobState

MAX_BATCH = 50_000  # as UNBROKEN_PRUNE_BATCH
ORDER = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)


def _states(names: list[str] | None) -> tuple[JobState, ...]:
    if not names:
        return ORDER
    chosen = job_states(names)
    for state in chosen:
        if state not in FINAL:
            raise ConfigError(
                f"--state {state}: only finished jobs are pruned (succeeded, dead, cancelled)"
            )
    return tuple(s for s in ORDER if s in chosen)


def _batch(value: int | None, default: int) -> int:
    batch = default if value is None else value
    if not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"--batch must be between 1 and {MAX_BATCH} (got {batch})")
    return batch


def _by_state(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]:,} {s}" for s in ORDER if counts.get(s))


def prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Jobs finished longer ago (30d, 12h); default UNBROKEN_RETENTION_SECONDS.",
        ),
    ] = None,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", "-s", help="Only this finished state (repeatable)."),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option("--batch", help="Jobs per DELETE; default UNBROKEN_PRUNE_BATCH."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted, per state.")
    ] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete finished jobs older than the retention now, in batches, until none is left."""
    settings = load_settings()
    age = parse_duration(older_than) if older_than else settings.retention_seconds
    states = _states(state)
    size = _batch(batch, settings.prune_batch)
    shown = older_than or format_age(age)
    with open_store() as store:
        matching = store.prune_count(age, states)
        total = sum(matching.values())
        report = {
            "dry_run": dry_run,
            "older_than_s": age,
            "states": list(states),
            "matching": matching,
            "deleted": 0,
            "by_state": {},
            "batches": 0,
            "seconds": 0.0,
        }
        if dry_run or not total:
            if as_json:
                emit_json(report)
            elif total:
                console.print(
                    f"{total:,} finished job(s) older than {shown} would be pruned: "
                    f"{_by_state(matching)}"
                )
            else:
                console.print(f"no finished job older than {shown} to prune")
            return
        confirm(f"Delete {total:,} finished job(s) older than {shown} for good?", yes)
        started = time.monotonic()
        run = progress_bar("pruning", total, lambda p: store.prune(age, states, size, p))
    seconds = time.monotonic() - started
    report.update(deleted=run.total, by_state=run.deleted, batches=run.batches, seconds=seconds)
    if as_json:
        emit_json(report)
        return
    console.print(
        f"pruned {run.total:,} finished job(s) older than {shown} in {run.batches:,} "
        f"batch(es), {seconds:.1f} s: {_by_state(run.deleted)}"
    )
