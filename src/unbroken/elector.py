"""Leader election through the database, so maintenance runs on exactly one worker.

A row in `leaders` holds the current term; the holder renews it every third of its
length, anyone may take it once it has expired. It needs no session state (no advisory
lock), so it works through PgBouncer in transaction mode too. A worker that stops
cleanly resigns, and the next one takes over at its next attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from unbroken import telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.sql import Queries

logger = logging.getLogger("unbroken.elector")


class Elector:
    def __init__(
        self,
        pool: AsyncRolePool,
        queries: Queries,
        holder: str,
        term_seconds: float,
        name: str = "maintenance",
    ) -> None:
        self._pool = pool
        self._elect = queries["leader_attempt_elect"]
        self._resign = queries["leader_resign"]
        self._holder = holder
        self._term = term_seconds
        self._name = name
        self.is_leader = False

    async def attempt(self) -> bool:
        params = {"name": self._name, "holder": self._holder, "ttl": self._term}
        async with self._pool.connection() as conn:
            row = await (await conn.execute(self._elect, params)).fetchone()
        leader = row is not None
        if leader != self.is_leader:
            self.is_leader = leader
            logger.info("%s leadership of %r", "took" if leader else "lost", self._name)
            telemetry.emit("leader.changed", role=self._name, holder=self._holder, is_leader=leader)
        return leader

    async def run(self, while_leader: Callable[[], Awaitable[None]]) -> None:
        """Try for the term every third of it; call `while_leader` each tick we hold it."""
        interval = self._term / 3
        while True:
            try:
                if await self.attempt():
                    await while_leader()
            except Exception as exc:
                self.is_leader = False
                logger.warning("leader election failed (%s: %s)", type(exc).__name__, exc)
            await asyncio.sleep(min(interval, 1.0) if self.is_leader else interval)

    async def resign(self) -> None:
        if not self.is_leader:
            return
        async with self._pool.connection() as conn:
            await conn.execute(self._resign, {"name": self._name, "holder": self._holder})
        self.is_leader = False
