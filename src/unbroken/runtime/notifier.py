"""The listener: one dedicated connection that LISTENs and wakes the producer.

It is not from the pool (a LISTEN must stay on one session), it is checked for liveness
every few seconds with a round trip, and it reconnects with backoff when it dies, waking
the producer after each reconnect because notifications sent meanwhile are lost. Not
used with PgBouncer in transaction mode, where LISTEN does not work (polling alone then),
unless UNBROKEN_LISTEN_URL gives the listener a direct URL to the server.

Its session lives exactly as long as the process (a SIGKILLed process's socket is closed by
the kernel, and the server ends the session at once), so it also holds a session advisory
lock under a fresh random key per connection: the mark by which other workers see that this
process is alive (the elector names it in the leader's row). A fresh key per connection: an
old half-open session the server has not ended yet may still hold the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import psycopg
from psycopg import sql

from unbroken.db.backoff import Backoff, BackoffPolicy
from unbroken.db.conninfo import connection_kwargs, session_statement
from unbroken.settings import Settings
from unbroken.sql import Queries

logger = logging.getLogger("unbroken.notifier")
LIVENESS_EVERY = 5.0  # seconds between round trips that prove the listener is alive


def listener_target(conninfo: str, settings: Settings) -> tuple[str, Settings]:
    """Where the listener connects, and with which settings: the direct `listen_url` when
    set (straight to the server, so the server settings travel in the startup packet as
    without PgBouncer), else the pools' own conninfo."""
    if settings.listen_url is None:
        return conninfo, settings
    direct = settings.model_copy(update={"pgbouncer": "off"})
    return settings.listen_url.get_secret_value(), direct


class Notifier:
    def __init__(
        self,
        conninfo: str,
        settings: Settings,
        queues: list[str],
        on_wake: Callable[[], None],
        queries: Queries,
    ) -> None:
        self._conninfo, self._settings = listener_target(conninfo, settings)
        self._channel = f"{settings.schema_name}.jobs"
        self._queues = set(queues)
        self._on_wake = on_wake
        self._lock_session = queries["worker_lock_session"]
        # The advisory lock this listener's session holds now; None while it holds none.
        self.lock_key: int | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def run(self) -> None:
        backoff = Backoff(BackoffPolicy(0.2, 5.0))
        kwargs = connection_kwargs(self._settings, role="listener")
        # Behind PgBouncer (session mode) the server settings come in a statement instead.
        on_connect = session_statement(self._settings, role="listener")
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **kwargs)
            except psycopg.Error as exc:
                delay = backoff.failed() or 5.0
                logger.warning("listener cannot connect (%s), retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            try:
                async with conn:
                    if on_connect is not None:
                        await conn.execute(on_connect)
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    await self._take_lock(conn)
                    backoff.reset()
                    self.connected.set()
                    self._on_wake()  # anything sent while we were away was missed
                    await self._listen(conn)
            except (psycopg.Error, OSError) as exc:
                self.connected.clear()
                self.lock_key = None
                self.reconnects += 1
                delay = backoff.failed() or 5.0
                logger.warning("listener lost its connection (%s), reconnecting", exc)
                await asyncio.sleep(delay)

    async def _take_lock(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        key = secrets.randbits(63)  # >= 0: pg_locks shows it as two 32-bit halves
        cur = await conn.execute(self._lock_session, {"lock_key": key})
        row = await cur.fetchone()
        # Not granted only if another session holds this very key (one chance in 2^63 per
        # pair): no mark then, and our term alone says we are alive.
        self.lock_key = key if row and row[0] else None

    async def _listen(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        while True:
            async for note in conn.notifies(timeout=LIVENESS_EVERY):
                if note.payload in self._queues:
                    self._on_wake()
            # A silent stretch: prove the session is alive (a half-open one raises here,
            # within the statement deadline).
            await asyncio.wait_for(conn.execute("SELECT 1"), self._settings.deadline())
