"""Leader election through the database, so maintenance runs on exactly one worker.

A row in `leaders` holds the current term. The holder renews it every second; a candidate
tries every 2 s and takes it when

- nobody holds it (the last leader stopped cleanly and resigned), or
- the holder's session is gone: the row names the session advisory lock (`lock_key`) that
  the holder's listener session takes when it connects and holds while it lives; a process
  that dies (SIGKILL, OOM kill, crash) loses that session at once, so another worker takes
  over within one try (2 s), without waiting for the term; or
- the term ran out (8 s, at most a lease): what replaces a leader that is alive but stuck
  (SIGSTOP, a blocked event loop) with its session still open, one on a host that vanished
  without closing its sockets, and one with no session to name (listen off, PgBouncer in
  transaction mode without a direct UNBROKEN_LISTEN_URL: LISTEN and session locks do not
  work through it).

A dead leader is so replaced within about 2 s, a stuck one or one without a session
within 10 s (term plus one try). The term row itself needs no session, so election works
through PgBouncer in transaction mode too. Behind PgBouncer in session mode the lock is
released when the client goes (server_reset_query, DISCARD ALL by default, unlocks all);
were it not, the lock would outlive the leader and the term would decide: the session
can only hasten a takeover, never prevent one. A candidate's try that finds a live
leader is a read (no row lock, no write). Two leaders at once are harmless, only
wasteful: every maintenance statement is guarded by the state it expects and skips
locked rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from unbroken import telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.runtime.rows import LEADER_TERM
from unbroken.sql import Queries

logger = logging.getLogger("unbroken.elector")
TERM_SECONDS = 8.0  # longest term: a stuck leader is replaced within this plus one try
RENEW_EVERY = 1.0  # the holder renews (and runs maintenance ticks) this often
TRY_EVERY = 2.0  # a candidate tries this often: how soon a dead leader's session is noticed


def term_for(lease_seconds: float) -> float:
    """The term: TERM_SECONDS, never longer than a lease (a stuck leader then holds rescue
    up no longer than the leases it rescues), never under 3 s (three renewals)."""
    return min(TERM_SECONDS, max(3.0, lease_seconds))


def _no_lock() -> int | None:
    return None


class Elector:
    def __init__(
        self,
        pool: AsyncRolePool,
        queries: Queries,
        holder: str,
        term_seconds: float,
        name: str = "maintenance",
        lock_key: Callable[[], int | None] = _no_lock,
    ) -> None:
        """`lock_key` returns the key of the session advisory lock this process holds right
        now (the listener's), or None: our row then names no session, and only our term
        says we are alive."""
        self._pool = pool
        self._elect = queries["leader_attempt_elect"]
        self._resign = queries["leader_resign"]
        self._holder = holder
        self._term = term_seconds
        self._name = name
        self._lock_key = lock_key
        self.is_leader = False

    async def attempt(self) -> bool:
        params = {
            "name": self._name,
            "holder": self._holder,
            "ttl": self._term,
            "lock_key": self._lock_key(),
        }
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=LEADER_TERM)
            term = await (await cur.execute(self._elect, params)).fetchone()
        leader = term is not None  # a row only when the term is ours
        if leader != self.is_leader:
            self.is_leader = leader
            logger.info("%s leadership of %r", "took" if leader else "lost", self._name)
            telemetry.emit("leader.changed", role=self._name, holder=self._holder, is_leader=leader)
        return leader

    async def run(
        self, while_leader: Callable[[], Awaitable[None]], tick_every: float = RENEW_EVERY
    ) -> None:
        """While we lead, call `while_leader` every `tick_every` seconds and renew the term
        every second; otherwise try every 2 s (a third of the term when that is shorter).
        Ticks are not tied to renewals: maintenance due every 0.5 s must not wait for one."""
        renew_every = min(RENEW_EVERY, self._term / 3)
        try_every = min(TRY_EVERY, self._term / 3)
        tick_every = min(tick_every, renew_every)
        renewed_at = float("-inf")
        while True:
            try:
                now = time.monotonic()
                if not self.is_leader or now - renewed_at >= renew_every:
                    renewed_at = now
                    await self.attempt()
                if self.is_leader:
                    await while_leader()
            except Exception as exc:
                self.is_leader = False
                logger.warning("leader election failed (%s: %s)", type(exc).__name__, exc)
            await asyncio.sleep(tick_every if self.is_leader else try_every)

    async def resign(self) -> None:
        if not self.is_leader:
            return
        async with self._pool.connection() as conn:
            await conn.execute(self._resign, {"name": self._name, "holder": self._holder})
        self.is_leader = False
