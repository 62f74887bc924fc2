"""The typed rows the runtime's statements return: one immutable, named type per query.

Each is built by `row_factory`, which checks the statement's column names once per result
(a reordered or renamed column fails the statement at once, as psycopg's `class_row`
would) and then builds each row from its values by position.

They are NamedTuples, not frozen dataclasses, because the claim and the outcome batch are
the worker's hot path and its event loop is what limits throughput: building 1,000
claimed jobs cost 3.7 ms more than plain tuples through `class_row` (a dict of names per
row), 1.7 ms as frozen dataclasses built by position, 0.4 ms as NamedTuples; frozen
dataclasses cost ~7% of one worker's async throughput at concurrency 1,000 (measured,
docs/benchmarks.md). Read them by name: nothing unpacks them by position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg.rows import BaseRowFactory, RowMaker

from unbroken.states import JobState

R = TypeVar("R")
_STATE = {s.value: s for s in JobState}  # a dict lookup is 20x cheaper than JobState(text)


def row_factory(
    make: Callable[[Sequence[Any]], R], columns: Sequence[str | None]
) -> BaseRowFactory[R]:
    """A psycopg row factory: `make(values)` for each row, once the result's column names
    are checked against `columns` (None: any name, for a column whose name says nothing)."""
    expected = tuple(columns)

    def factory(cursor: Any) -> RowMaker[R]:
        description = cursor.description
        if description is not None:
            names = tuple(c.name for c in description)
            if len(names) != len(expected) or any(
                want is not None and want != got for want, got in zip(expected, names, strict=True)
            ):
                raise psycopg.ProgrammingError(
                    f"{getattr(make, '__qualname__', make)}: the statement returned the "
                    f"columns {names}, not {expected}"
                )
        return make

    return factory


class ClaimedJob(NamedTuple):
    """A job job_get_available claimed for this worker: now running, attempt counted."""

    id: int
    queue: str
    task: str
    args: str  # JSON text: the producer decodes it, one row at a time
    attempt: int
    max_attempts: int
    priority: int
    checkpoint: Any
    progress: Any  # jobs.progress as the last attempt left it (None: nothing reported)
    chunk_size: int | None
    rescues: int
    run_at: datetime  # when it became due (enqueued, or its scheduled time)
    workflow_id: int | None  # its workflow, None for a job enqueued alone
    upstream: str | None  # a workflow step's upstream jobs (JSON text: unbroken.workflow)
    claim: str  # the claim's token (its now() as text): fences every write of the attempt


# job_get_available's RETURNING list: `token` is the claim.
CLAIM_COLUMNS = (*ClaimedJob._fields[:-1], "token")
CLAIMED_JOB = row_factory(ClaimedJob._make, CLAIM_COLUMNS)


class FinishedJob(NamedTuple):
    """An outcome job_finish_many recorded (fenced ones return no row)."""

    id: int
    state: JobState  # the state written: the row may have said dead or cancelled instead
    place: int  # the outcome's place in the batch, from 1


def _finished(values: Sequence[Any]) -> FinishedJob:
    id, state, _notified, place = values
    return FinishedJob(id, _STATE[state], place)


FINISHED_JOB = row_factory(_finished, ("id", "state", None, "n"))


class RenewedLease(NamedTuple):
    """A lease lease_renew_many extended (one it did not is someone else's now)."""

    id: int
    cancel_requested: bool


RENEWED_LEASE = row_factory(RenewedLease._make, RenewedLease._fields)


class RescuedJob(NamedTuple):
    """A job job_rescue_expired took back from a worker whose lease ran out."""

    id: int
    state: JobState  # retryable, dead (no attempt left) or cancelled (a cancel was asked)
    worker_id: str  # the worker that stopped renewing it
    task: str
    queue: str
    attempt: int
    max_attempts: int


def _rescued(values: Sequence[Any]) -> RescuedJob:
    id, state, worker_id, task, queue, attempt, max_attempts, _woken = values
    return RescuedJob(id, _STATE[state], worker_id, task, queue, attempt, max_attempts)


# The last column is the wake-up of a full key's queue (job_rescue_expired), nothing to read.
RESCUED_JOB = row_factory(_rescued, (*RescuedJob._fields, None))


class PromotedQueue(NamedTuple):
    """How many due jobs of one queue job_promote_due made available (workers notified)."""

    queue: str
    jobs: int
    notified: bool


PROMOTED_QUEUE = row_factory(PromotedQueue._make, PromotedQueue._fields)


class PrunedState(NamedTuple):
    """How many jobs of one final state a job_prune_finished (or job_prune_count) covers."""

    state: str
    jobs: int


PRUNED_STATE = row_factory(PrunedState._make, PrunedState._fields)


class LeaderTerm(NamedTuple):
    """The term leader_attempt_elect gave us (no row: someone else leads)."""

    holder: str


LEADER_TERM = row_factory(LeaderTerm._make, LeaderTerm._fields)
