"""The producer: claims jobs for the executor's free slots, never more.

It fetches when slots are free and there is reason to believe work is waiting: a
notification from the listener, a full previous batch (a backlog), or the poll interval
running out (the safety net when notifications are lost or LISTEN is unavailable).
A worker that enforces limits also looks again soon after a fetch came back short: that
fetch passed over the jobs of keys at their limit, and of keys whose rows another worker's
claim or outcome held at that moment (SKIP LOCKED), which are still waiting and for which
no notification comes. It looks again when its own completer has written a batch (whose
keys it may have passed over), and otherwise after 50 ms, then twice as long each time
until the poll interval, and from 50 ms again after a full fetch.
Under a backlog it lets a few slots accumulate before fetching again (a few ms at most),
so one statement claims many jobs instead of one each.

The fetch returns each job's args as text and decodes them here, one row at a time: a
row no decoder can read (nested too deeply, not an {"args": [...], "kwargs": {...}}
object: another client's SQL, an older version) goes dead at once with its reason, as an
outcome through the completer, while the rest of its batch runs. Decoding inside the
fetch would fail the whole batch and leave its claimed jobs running until their leases
ran out, again at every rescue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from unbroken import telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.db.backoff import Backoff, BackoffPolicy
from unbroken.enqueue import decode_payload
from unbroken.runtime.completer import Completer, Outcome
from unbroken.runtime.executor import Executor
from unbroken.runtime.rows import CLAIMED_JOB, ClaimedJob
from unbroken.sql import Queries
from unbroken.states import JobState, OutcomeKind

logger = logging.getLogger("unbroken.producer")
BACKLOG_GATHER_SECONDS = 0.002  # wait this long for more free slots when work is queued
KEYED_RECHECK_SECONDS = 0.05  # first look again after a short fetch, when enforcing limits


class Producer:
    def __init__(
        self,
        pool: AsyncRolePool,
        queries: Queries,
        executor: Executor,
        settings: Any,
        worker_id: str,
        completer: Completer,
    ) -> None:
        self._pool = pool
        self._sql = queries["job_get_available"]
        self._executor = executor
        self._completer = completer
        self._queues: list[str] = settings.queue_list()
        self._lease: float = settings.lease_seconds
        self._poll: float = settings.poll_interval
        self._worker_id = worker_id
        self.wake = asyncio.Event()
        self._recheck: float | None = None  # enforcing limits: the next look after a short fetch
        self.stopping = False
        self.last_fetch_empty = False
        self.fetches = 0

    def enforce_limits(self, queries: Queries) -> None:
        """Fetch jobs with a limit key too, within their limits (unbroken.limits). Without
        it the fetch is the one of a database without flow control: it leaves keyed jobs to
        workers that enforce their limits."""
        self._sql = queries["job_get_available_keyed"]
        self._recheck = KEYED_RECHECK_SECONDS

    async def run(self) -> None:
        backlog = True  # look once at start-up without waiting for a notification
        errors = Backoff(BackoffPolicy(0.1, 5.0))
        while not self.stopping:
            if not backlog:
                wait = self._poll
                if self._recheck is not None:
                    wait = min(self._recheck, self._poll)
                    self._recheck = min(self._recheck * 2, self._poll)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), wait)
                if self.stopping:
                    break
            self.wake.clear()
            # Gather slots: under a backlog, wait briefly for a bigger batch.
            wanted = max(1, self._executor.concurrency // 2) if backlog else 1
            await self._executor.wait_for_slots(wanted, BACKLOG_GATHER_SECONDS)
            if self.stopping:
                break
            limit = self._executor.free_slots()
            try:
                rows = await self._fetch(limit)
            except Exception as exc:
                delay = errors.failed() or 5.0
                logger.warning(
                    "fetch failed (%s: %s), retrying in %.2f s",
                    type(exc).__name__,
                    str(exc).strip(),
                    delay,
                )
                await asyncio.sleep(delay)
                backlog = True
                continue
            errors.reset()
            self.fetches += 1
            undecodable = []
            for job in rows:
                try:
                    payload = decode_payload(job.args)
                except ValueError as exc:
                    undecodable.append((job, str(exc)))
                    continue
                self._executor.start(job, payload)
            # After the others have started: put() waits while the completer's buffer is full.
            for job, reason in undecodable:
                await self._undecodable(job, reason)
            backlog = len(rows) >= limit
            if backlog and self._recheck is not None:
                self._recheck = KEYED_RECHECK_SECONDS
            self.last_fetch_empty = not rows
            if rows:
                telemetry.emit(
                    "jobs.fetched",
                    queue_count=len(self._queues),
                    count=len(rows),
                    free_slots=limit,
                )

    async def _undecodable(self, job: ClaimedJob, reason: str) -> None:
        """Send a claimed job whose args cannot be decoded straight to dead, with why."""
        job_id, queue, task, attempt = job.id, job.queue, job.task, job.attempt
        message = f"arguments cannot be decoded: {reason}"
        logger.error("job %d (%s) is dead, its %s", job_id, task, message)
        error = json.dumps(
            {
                "attempt": attempt,
                "at": datetime.now(UTC).isoformat(),
                "worker": self._worker_id,
                "type": "UndecodableArgs",
                "message": message,
                "traceback": None,
                "kind": OutcomeKind.UNDECODABLE,
            }
        )
        if telemetry.active():
            telemetry.emit(
                "job.finished",
                job_id=job_id,
                task=task,
                queue=queue,
                attempt=attempt,
                outcome=OutcomeKind.DEAD,
                duration_s=0.0,
                error_type="UndecodableArgs",
                error=error,
            )
        # Written, fenced and batched like any outcome; its lease is renewed meanwhile.
        await self._completer.put(
            Outcome(
                job_id,
                attempt,
                job.claim,
                JobState.DEAD,
                OutcomeKind.UNDECODABLE,
                queue,
                task,
                error=error,
            )
        )

    async def _fetch(self, limit: int) -> list[ClaimedJob]:
        params = {
            "queues": self._queues,
            "limit": limit,
            "worker_id": self._worker_id,
            "lease": self._lease,
        }
        async with self._pool.connection() as conn:
            # Prepared (after psycopg's threshold; never behind PgBouncer in transaction mode):
            # planning was a third of an idle worker's fetch, and the cached plan claims a
            # batch of 1,000 as fast as a fresh one (measured), unlike job_finish_many's.
            cur = conn.cursor(row_factory=CLAIMED_JOB)
            await cur.execute(self._sql, params)
            return await cur.fetchall()
