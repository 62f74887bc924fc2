"""Maintenance run by the leader: rescue, promote, prune, each in bounded statements.

- Rescuer: running jobs whose lease expired go back to retryable (dead when their
  attempts are spent), counted on the job, within `rescue_interval` of the expiry;
  not in the first lease after the server (re)started, when no live worker could renew.
- Scheduler: scheduled and retryable jobs whose run_at has come become available, and a
  NOTIFY wakes the workers of their queues.
- Pruner (runtime/pruner.py): finished jobs older than the retention are deleted in
  batches until caught up, within a time budget per tick; behind, it runs at every tick.
  Never those of a workflow that still has a live job; then workflows left without jobs.
- Limit keys (flow control): a key whose count of running jobs differs from its running
  jobs (a hand edit of a keyed job's state) is recounted under its lock every minute.
- Workers whose heartbeat stopped a lease ago are forgotten with every rescue, so a killed
  worker's registration goes within a lease and a rescue interval (a live one forgotten
  while it could not beat registers again with its next heartbeat).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from unbroken import logs, telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.runtime.pruner import Pruner
from unbroken.runtime.rows import PROMOTED_QUEUE, RESCUED_JOB
from unbroken.sql import Queries

logger = logging.getLogger("unbroken.maintenance")
BATCH = 1000
LIMIT_RECOUNT_INTERVAL = 60.0  # seconds; the fetch, finish and rescue keep counts exact


class Maintenance:
    def __init__(
        self,
        pool: AsyncRolePool,
        queries: Queries,
        settings: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._q = queries
        self._settings = settings
        self._clock = clock
        self._next: dict[str, float] = {}
        self.pruner = Pruner(pool, queries, settings, clock)
        self.rescued = 0
        self.promoted = 0

    def _due(self, name: str, every: float) -> bool:
        now = self._clock()
        if now < self._next.get(name, 0.0):
            return False
        self._next[name] = now + every
        return True

    async def tick(self) -> None:
        s = self._settings
        if self._due("rescue", s.rescue_interval):
            await self.rescue()
            await self.forget_silent_workers()
        if self._due("promote", s.promote_interval):
            await self.promote()
        if self._due("limits", LIMIT_RECOUNT_INTERVAL):
            await self.recount_limit_keys()
        if self._due("prune", s.prune_interval) and not (await self.pruner.run()).caught_up:
            self._next["prune"] = 0.0  # behind: again at the next tick

    async def rescue(self) -> int:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=RESCUED_JOB)
            await cur.execute(
                self._q["job_rescue_expired"],
                {"limit": BATCH, "restart_grace": self._settings.lease_seconds},
            )
            rows = await cur.fetchall()
        for r in rows:
            logs.rescued(r.id, r.task, r.queue, r.attempt, r.max_attempts, r.state, r.worker_id)
            telemetry.emit("job.rescued", job_id=r.id, worker_id=r.worker_id, state=r.state)
        self.rescued += len(rows)
        if rows:
            await self.promote()  # rescued jobs are due now: make them available at once
        return len(rows)

    async def recount_limit_keys(self) -> int:
        """Correct the keys whose running count drifted from their running jobs; returns
        how many were corrected (each is logged: a drift means a hand edit)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._q["limit_keys_drifted"])
            keys = [row[0] for row in await cur.fetchall()]
            if not keys:
                return 0
            async with conn.transaction():
                await conn.execute(self._q["limit_keys_lock"], {"keys": keys})
                cur = await conn.execute(self._q["limit_keys_recount"], {"keys": keys})
                corrected = await cur.fetchall()
        for key, was, now in corrected:
            logger.warning("limit key %s counted %d running jobs, has %d: corrected", key, was, now)
        return len(corrected)

    async def promote(self) -> int:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=PROMOTED_QUEUE)
            await cur.execute(self._q["job_promote_due"], {"limit": BATCH})
            rows = await cur.fetchall()
        count = 0
        for row in rows:
            count += row.jobs
            telemetry.emit("job.promoted", queue=row.queue, count=row.jobs)
        self.promoted += count
        return count

    async def forget_silent_workers(self) -> int:
        silence = max(self._settings.lease_seconds, 2 * self._settings.heartbeat_every())
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._q["worker_prune_silent"], {"silence": silence})
        return max(0, cur.rowcount)
