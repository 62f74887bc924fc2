"""The lease keeper: one statement renews the leases of every job this worker holds.

Every `heartbeat_interval` it extends the leases of running jobs and of finished jobs
whose outcome is still in the completer's buffer (their rows are still 'running', and
letting those leases lapse would have them rescued and run twice). The same statement
records the worker's heartbeat (registering it again if the leader forgot it while it
could not beat) and returns any cancel requests, so cancellation costs no extra query. A
lease the statement did not renew belongs to someone else now: the job is told to stop
(fencing makes its writes harmless anyway). Progress that tasks
reported since the last beat rides in the same statement, under the same fence
(context.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import psycopg

from unbroken import telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.db.arrays import claim_array, int_array
from unbroken.runtime.completer import Completer
from unbroken.runtime.executor import Executor
from unbroken.runtime.rows import RENEWED_LEASE
from unbroken.sql import Queries

logger = logging.getLogger("unbroken.leases")


class LeaseKeeper:
    def __init__(
        self,
        pool: AsyncRolePool,
        queries: Queries,
        executor: Executor,
        completer: Completer,
        settings: Any,
        worker_id: str,
    ) -> None:
        self._pool = pool
        self._renew = queries["lease_renew_many"]
        self._register = queries["worker_register"]
        self._executor = executor
        self._completer = completer
        self._interval: float = settings.heartbeat_every()
        self._lease: float = settings.lease_seconds
        self._worker_id = worker_id
        self._queues: list[str] = settings.queue_list()
        self._concurrency: int = settings.concurrency
        self.renewals = 0
        self.registered = False

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:
                logger.warning("heartbeat failed (%s: %s)", type(exc).__name__, str(exc).strip())
                self.registered = False  # re-register once the database is back
                await asyncio.sleep(min(1.0, self._interval))
                continue
            await asyncio.sleep(self._interval)

    def _identity(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self._queues,
            "concurrency": self._concurrency,
        }

    async def register(self) -> None:
        params = {"id": self._worker_id, **self._identity()}
        async with self._pool.connection() as conn:
            await conn.execute(self._register, params)
        self.registered = True

    async def _renew_leases(self, params: dict[str, Any]) -> list[Any]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=RENEWED_LEASE)
            await cur.execute(self._renew, params, prepare=False)
            return await cur.fetchall()

    async def beat(self) -> None:
        if not self.registered:
            await self.register()
        running = self._executor.held()
        held = running + self._completer.pending()
        unsent = self._executor.progress_unsent()
        started = time.monotonic()
        params = {
            "ids": int_array(job_id for job_id, _, _ in held),
            "attempts": int_array(attempt for _, attempt, _ in held),
            "claims": claim_array(claim for _, _, claim in held),
            # One entry per running job (the completer's pending ones come after: NULL).
            "progress": [unsent.get(job_id, (0, None))[1] for job_id, _, _ in running]
            if unsent
            else None,
            "lease": self._lease,
            "worker_id": self._worker_id,
            **self._identity(),  # the beat registers us again if the leader forgot us
        }
        try:
            rows = await self._renew_leases(params)
        except psycopg.DataError as exc:
            if params["progress"] is None:
                raise
            # A report the database refuses must never cost the leases: renew without
            # reports, and drop them (the next one a task makes is sent as usual).
            logger.warning(
                "progress reports dropped, the database refused them (%s: %s)",
                type(exc).__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "",
            )
            rows = await self._renew_leases({**params, "progress": None})
        self.renewals += 1
        self._executor.progress_sent(unsent)
        telemetry.emit(
            "batch.flushed", kind="lease", size=len(held), duration_s=time.monotonic() - started
        )
        renewed = {row.id for row in rows}
        for row in rows:
            if row.cancel_requested:
                self._executor.mark_cancel_requested(row.id)
        for job_id, _, claim in running:
            # Only a job still running here under the same claim can have lost its lease.
            current = self._executor.running.get(job_id)
            if job_id not in renewed and current is not None and current.ctx.claim == claim:
                self._executor.mark_lease_lost(job_id)
