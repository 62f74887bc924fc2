"""The completer: job outcomes are buffered and written as one statement per batch.

A connection per status update can drown a database under load. Here an outcome
goes into a bounded buffer; a batch is written when it reaches `batch_size` or when its
oldest outcome has waited `batch_interval`, as one `job_finish_many` statement on one
pooled connection. When the database is away, the batch is retried with backoff and the
buffer holds the outcomes (jobs that finish meanwhile wait for room: backpressure, never
unbounded memory). A batch that keeps failing is written one outcome at a time, so one
bad row cannot block the rest. `drain()` writes everything left at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from unbroken import logs, telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.db.arrays import claim_array, float_array, int_array, word_array
from unbroken.db.backoff import Backoff, BackoffPolicy
from unbroken.db.classify import is_transient
from unbroken.runtime.rows import FINISHED_JOB
from unbroken.sql import Queries
from unbroken.states import JobState, OutcomeKind

logger = logging.getLogger("unbroken.completer")

# After this many failed tries of one batch, write its outcomes one at a time.
BATCH_TRIES_BEFORE_SINGLES = 3


@dataclass(slots=True)
class Outcome:
    """What one attempt came to, waiting to be written."""

    job_id: int
    attempt: int
    claim: str  # the attempt's claim token (JobContext.claim): fences a claim a crash forgot
    state: JobState  # the job's next state (states.state_after)
    kind: OutcomeKind  # what happened, for logs and telemetry
    queue: str
    task: str
    delay: float | None = None  # seconds until the retry (retryable) or next run (scheduled)
    error: str | None = None  # JSON of the error record
    result: str | None = None  # JSON of the return value
    runtime_ms: int = 0
    max_attempts: int = 0  # the job's, as fetched (for the log line)
    progress: str | None = None  # JSON of the attempt's last progress report not yet written
    workflow_id: int | None = None  # a workflow's step: its result must not be lost


class Completer:
    def __init__(
        self, pool: AsyncRolePool, queries: Queries, worker_id: str, settings: Any
    ) -> None:
        self._pool = pool
        self._sql = queries["job_finish_many"]
        self._worker_id = worker_id
        self._batch_size: int = settings.batch_size
        self._interval: float = settings.batch_interval
        self._max: int = settings.batch_buffer_max
        self._buffer: deque[Outcome] = deque()
        self._first_at = 0.0
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._stopping = False
        self._flushing = asyncio.Lock()  # run() and drain() never write the same batch twice
        self.written = 0
        self.fenced = 0
        self.dropped = 0
        # Called after each batch is written: a worker that enforces limits fetches again,
        # as its last fetch may have passed over keys this batch held (unbroken.producer).
        self.after_write: Callable[[], None] | None = None

    # --- producers of outcomes ----------------------------------------------------------------
    async def put(self, outcome: Outcome) -> None:
        """Buffer an outcome; waits while the buffer is full (the database is away)."""
        while len(self._buffer) >= self._max:
            self._has_room.clear()
            await self._has_room.wait()
        if not self._buffer:
            self._first_at = time.monotonic()
        self._buffer.append(outcome)
        self._has_items.set()

    def pending(self) -> list[tuple[int, int, str]]:
        """(job id, attempt, claim) of outcomes not yet written: their leases must stay renewed."""
        return [(o.job_id, o.attempt, o.claim) for o in self._buffer]

    def __len__(self) -> int:
        return len(self._buffer)

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._has_items.wait()
            # Let a batch fill up, but never keep the oldest outcome past the interval.
            while len(self._buffer) < self._batch_size and not self._stopping:
                remaining = self._first_at + self._interval - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, self._interval))
            await self._flush_once()
            if not self._buffer:
                self._has_items.clear()

    async def drain(self, timeout: float) -> None:
        """Write everything buffered (shutdown); gives up after `timeout` seconds."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._buffer and time.monotonic() < deadline:
            await self._flush_once(deadline=deadline)
        if self._buffer:
            logger.error(
                "%d job outcomes could not be written before shutdown; their leases will "
                "expire and the jobs will be rescued",
                len(self._buffer),
            )

    async def _flush_once(self, deadline: float | None = None) -> None:
        async with self._flushing:
            await self._flush_locked(deadline)

    async def _flush_locked(self, deadline: float | None) -> None:
        batch = [self._buffer[i] for i in range(min(self._batch_size, len(self._buffer)))]
        if not batch:
            return
        backoff = Backoff(BackoffPolicy(0.05, 2.0), max_tries=BATCH_TRIES_BEFORE_SINGLES)
        while True:
            started = time.monotonic()
            try:
                written = await self._write(batch)
            except Exception as exc:
                telemetry.emit(
                    "batch.failed", kind="finish", size=len(batch), error_type=type(exc).__name__
                )
                delay = backoff.failed() if is_transient(exc) else None
                if delay is None or (deadline is not None and time.monotonic() + delay > deadline):
                    logger.warning(
                        "outcome batch of %d failed %d times (%s: %s); writing one by one",
                        len(batch),
                        backoff.tries,
                        type(exc).__name__,
                        str(exc).strip(),
                    )
                    await self._write_singly(batch)
                    break
                logger.warning(
                    "outcome batch of %d failed (%s), retrying in %.2f s",
                    len(batch),
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self._account(batch, written)
            if self.after_write is not None:
                self.after_write()
            telemetry.emit(
                "batch.flushed",
                kind="finish",
                size=len(batch),
                duration_s=time.monotonic() - started,
            )
            break
        for _ in batch:
            self._buffer.popleft()
        if self._buffer:
            self._first_at = time.monotonic()
        self._has_room.set()

    async def _write(self, batch: list[Outcome]) -> dict[int, JobState]:
        """Write a batch; returns {place (from 1): state written} of the outcomes recorded."""
        # Plain columns go as array literals (db/arrays.py); jsonb columns are lists,
        # usually all None (then one NULL stands for the array).
        errors = [o.error for o in batch]
        results = [o.result for o in batch]
        progress = [o.progress for o in batch]
        params = {
            "ids": int_array(o.job_id for o in batch),
            "attempts": int_array(o.attempt for o in batch),
            "states": word_array(o.state for o in batch),
            "delays": float_array(o.delay for o in batch),
            "errors": errors if any(e is not None for e in errors) else None,
            "results": results if any(r is not None for r in results) else None,
            "runtimes": int_array(o.runtime_ms for o in batch),
            "claims": claim_array(o.claim for o in batch),
            "progress": progress if any(p is not None for p in progress) else None,
            "worker_id": self._worker_id,
        }
        async with self._pool.connection() as conn:
            # Never prepared: a cached generic plan cannot see the arrays' sizes and was
            # measured 20x slower than a fresh plan, which costs well under a millisecond.
            cur = conn.cursor(row_factory=FINISHED_JOB)
            await cur.execute(self._sql, params, prepare=False)
            return {row.place: row.state for row in await cur.fetchall()}

    async def _write_singly(self, batch: list[Outcome]) -> None:
        for outcome in batch:
            backoff = Backoff(BackoffPolicy(0.1, 5.0), max_tries=5)
            degraded = False
            while True:
                try:
                    written = await self._write([outcome])
                except Exception as exc:
                    delay = backoff.failed() if is_transient(exc) else None
                    if delay is None and not degraded:
                        # The row refused this outcome's data (say, a result jsonb cannot
                        # hold): record the state with a note instead of the data.
                        outcome, degraded = _without_data(outcome, exc), True
                        continue
                    if delay is None:
                        # Nothing more we can do; the lease runs out and the rescuer takes
                        # the job, so it is not lost, only run again.
                        self.dropped += 1
                        logger.error(
                            "could not record job %d attempt %d (%s): %s",
                            outcome.job_id,
                            outcome.attempt,
                            outcome.kind,
                            exc if isinstance(exc, psycopg.Error) else repr(exc),
                        )
                        break
                    await asyncio.sleep(delay)
                    continue
                self._account([outcome], written)
                break

    def _account(self, batch: list[Outcome], written: dict[int, JobState]) -> None:
        """Count the batch, and log each outcome as the database recorded it (logs.py)."""
        self.written += len(written)
        verbose = logs.JOBS.isEnabledFor(logging.DEBUG)  # successes are logged only then
        for place, o in enumerate(batch, start=1):
            state = written.get(place)
            if state is None:
                self.fenced += 1
                telemetry.emit("write.fenced", job_id=o.job_id, attempt=o.attempt, kind=o.kind)
                logs.fenced(o, self._worker_id)
            elif verbose or state != JobState.SUCCEEDED:
                logs.outcome(o, state, self._worker_id)


def _without_data(outcome: Outcome, exc: BaseException) -> Outcome:
    """The outcome without the data the row refused, and a note saying so. A workflow's
    step that succeeded ends dead instead (ResultNotStorable, as when the worker itself
    finds the result unstorable): its dependents would read a result that is not there."""
    lost_result = (
        outcome.workflow_id is not None
        and outcome.state == JobState.SUCCEEDED
        and outcome.result is not None
    )
    note = json.dumps(
        {
            "attempt": outcome.attempt,
            "type": "ResultNotStorable" if lost_result else "OutcomeNotRecordable",
            "message": f"the outcome's data could not be stored: {type(exc).__name__}: {exc}",
            "kind": "permanent" if lost_result else outcome.kind,
            "traceback": None,
        }
    )
    changed = dataclasses.replace(outcome, error=note, result=None, progress=None)
    if lost_result:
        return dataclasses.replace(changed, state=JobState.DEAD, kind=OutcomeKind.DEAD)
    return changed
