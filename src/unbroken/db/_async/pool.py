"""Named connection pools that survive the database: the async source.

`src/unbroken/db/_sync/pool.py` is generated from this file by `scripts/gen_sync.py`
(a test fails if it is stale), so the sync and async forms cannot drift apart.

What this adds to psycopg_pool (which does the pooling itself):
- a connection handed out is alive: it is checked on checkout (a round trip, or a look at
  its socket if it was healthy a moment ago: `liveness.py`), and after any
  connection-class error every idle connection is checked at once (`flush`), so a server
  restart costs one round of reconnects, not one failed checkout per stale connection;
- a connection always goes back idle: one returned inside a transaction is rolled back
  and the caller is named in a WARNING (no connection is left idle in a transaction);
- `transaction()` commits on success and rolls back on any exception;
- `run(fn)` is a unit of work: `fn(conn)` in a transaction, retried on a fresh
  connection with backoff when the error is transient;
- start-up waits for an unreachable server with backoff and one clear final error;
- while the server is away, the pool reconnects steadily and without end, one attempt at a
  time (`reconnect.py`), so a caller waiting on it is served about half a second after the
  server accepts again, however long the outage was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff
from psycopg_pool.pool_async import AddConnection

from unbroken.db.backoff import Backoff, BackoffPolicy
from unbroken.db.classify import is_connection_error, is_transient
from unbroken.db.compat import AsyncWork, asleep
from unbroken.db.conninfo import (
    connection_kwargs,
    describe_target,
    redact,
    session_statement,
    transaction_statement,
)
from unbroken.db.deadline import AsyncDeadlineConnection
from unbroken.db.liveness import mark_alive, recently_alive
from unbroken.db.reconnect import GatedAttempt, ReconnectGate
from unbroken.db.stats import PoolStats, caller_outside_unbroken
from unbroken.errors import ConfigError, DatabaseUnavailable, UnitOfWorkFailed
from unbroken.settings import Settings

T = TypeVar("T")
logger = logging.getLogger("unbroken.db")


class AsyncSteadyPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """psycopg_pool's pool, reconnecting through one `ReconnectGate` (db/reconnect.py):
    steadily and without end while the server is away, one attempt at a time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = ReconnectGate()

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        wait = self.gate.admit()
        if wait > 0:  # another attempt is in flight, or the last one failed too recently
            await self.schedule_task(AddConnection(self, attempt, growing=growing), wait)
            return
        try:
            await super()._add_connection(attempt or GatedAttempt(self.gate), growing=growing)
        finally:
            self.gate.release()

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[Any]:
        try:
            conn = await super()._connect(timeout)
        except BaseException:
            self.gate.failed()
            raise
        self.gate.succeeded()
        return conn


class AsyncRolePool:
    """One named pool (for example "worker" or "api") with its own bounded capacity."""

    def __init__(
        self,
        role: str,
        conninfo: str,
        settings: Settings,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        self.role = role
        self.settings = settings
        self._conninfo = conninfo
        self._flushes = 0
        self._dirty_returns = 0
        self._opened = False  # once opened, a closed pool stays closed (PoolClosed)
        self._on_connect = session_statement(settings, role=role)
        self._per_transaction = transaction_statement(settings, role=role)
        self._pool = AsyncSteadyPool(
            conninfo,
            name=role,
            open=False,
            connection_class=AsyncDeadlineConnection,
            kwargs=connection_kwargs(settings, role=role),
            configure=self._configure,
            min_size=settings.pool_min_size if min_size is None else min_size,
            max_size=settings.pool_max_size if max_size is None else max_size,
            timeout=settings.pool_acquire_timeout,
            max_lifetime=settings.pool_max_lifetime,
            max_idle=settings.pool_max_idle,
        )

    async def _configure(self, conn: AsyncConnection[Any]) -> None:
        conn.statement_deadline = self.settings.deadline()  # type: ignore[attr-defined]
        # Behind PgBouncer the server settings cannot ride in the startup packet (conninfo.py).
        conn.transaction_settings = self._per_transaction  # type: ignore[attr-defined]
        if self._on_connect is not None:
            await conn.execute(self._on_connect)

    # --- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Wait until the server answers (with backoff), then open the pool."""
        await wait_until_reachable(self._conninfo, self.settings)
        await self._start()

    async def _start(self) -> None:
        await self._pool.open(wait=False)
        self._opened = True

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> AsyncRolePool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connections -------------------------------------------------------------------------
    @asynccontextmanager
    async def connection(
        self, *, timeout: float | None = None
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A live connection in autocommit mode; it goes back to the pool idle, always.

        `timeout`: seconds to wait for one (default: pool_acquire_timeout)."""
        conn = await self._checkout(timeout)
        try:
            yield conn
        except BaseException as exc:
            if is_connection_error(exc):
                await self.flush()
            raise
        finally:
            await self._checkin(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        """Commit if the body succeeds, roll back if it raises anything."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def run(self, work: AsyncWork[T], *, transaction: bool = True) -> T:
        """Run `work(conn)` in a transaction; retry transient failures on a fresh connection.

        The caller sees the result, or one final error: the permanent error itself, or
        `UnitOfWorkFailed` (chained to the last transient error) when the retries ran out.
        `transaction=False` saves the BEGIN/COMMIT round trips for work that is a single
        statement (atomic on its own in autocommit mode).
        """
        backoff = Backoff(
            BackoffPolicy(self.settings.retry_backoff_base, self.settings.retry_backoff_cap),
            max_tries=self.settings.retry_attempts,
        )
        while True:
            try:
                if not transaction:
                    async with self.connection() as conn:
                        return await work(conn)
                async with self.transaction() as conn:
                    return await work(conn)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.failed()
                name = getattr(work, "__qualname__", repr(work))
                if delay is None:
                    raise UnitOfWorkFailed(
                        f"unit of work {name} failed {backoff.tries} times on transient "
                        f"errors; last: {type(exc).__name__}: {redact(str(exc)).strip()}",
                        attempts=backoff.tries,
                    ) from exc
                logger.warning(
                    "unit of work %s failed (try %d/%d), retrying in %.2f s: %s: %s",
                    name,
                    backoff.tries,
                    self.settings.retry_attempts,
                    delay,
                    type(exc).__name__,
                    redact(str(exc)).strip(),
                )
                await asleep(delay)

    async def _checkout(self, timeout: float | None = None) -> AsyncConnection[Any]:
        if not self._opened:
            # A pool handed out before anyone opened it (a role added to an open Database:
            # `app.database().pool("metrics")`) opens on first use, like the App's own.
            await self.open()
        wait = self.settings.pool_acquire_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            conn = await self._pool.getconn(timeout=max(0.01, deadline - time.monotonic()))
            if recently_alive(conn, self.settings.pool_check_after):
                return conn
            try:
                # An empty query is one round trip and proves the session is alive.
                await conn.execute("")
            except psycopg.Error:
                await self._pool.putconn(conn)  # broken: the pool discards it
                if time.monotonic() >= deadline:
                    raise
                await self.flush()
                continue
            return conn

    async def _checkin(self, conn: AsyncConnection[Any]) -> None:
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            self._dirty_returns += 1
            logger.warning(
                "connection returned to pool %r inside a transaction by %s: rolled back",
                self.role,
                caller_outside_unbroken(),
            )
            try:
                await conn.rollback()
            except psycopg.Error:
                await conn.close()
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            mark_alive(conn)
        await self._pool.putconn(conn)

    async def flush(self) -> None:
        """Check every idle connection now and replace the dead ones, all in one go."""
        self._flushes += 1
        await self._pool.check()

    def stats(self) -> PoolStats:
        return PoolStats.from_pool(
            self.role, self._pool.get_stats(), self._flushes, self._dirty_returns
        )


async def wait_until_reachable(
    conninfo: str, settings: Settings, startup_wait: float | None = None
) -> None:
    """Connect once, retrying with backoff and jitter for up to `startup_wait` seconds
    (default: `settings.startup_wait`; 0 tries once)."""
    total = settings.startup_wait if startup_wait is None else startup_wait
    policy = BackoffPolicy(settings.startup_backoff_base, settings.startup_backoff_cap)
    backoff = Backoff(policy, give_up_after=total)
    planned = policy_attempts(policy, total)
    kwargs = connection_kwargs(settings, role="startup")
    while True:
        try:
            conn = await AsyncConnection.connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            if "unsupported startup parameter: options" in str(exc):
                raise ConfigError(
                    f"{describe_target(conninfo)} refuses the startup parameter `options`: "
                    "it is PgBouncer. Set UNBROKEN_PGBOUNCER=session or =transaction "
                    "(its pool_mode; docs/pgbouncer.md)"
                ) from None
            delay = backoff.failed()
            reason = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc)
            if delay is None:
                raise DatabaseUnavailable(
                    f"database not reachable after {backoff.elapsed():.1f} s "
                    f"({describe_target(conninfo)}): {reason}"
                ) from None
            logger.warning(
                "database not reachable (attempt %d/%d), retrying in %.1f s: %s",
                backoff.tries,
                planned,
                delay,
                reason,
            )
            await asleep(delay)
        else:
            await conn.close()
            return


def policy_attempts(policy: BackoffPolicy, total_wait: float) -> int:
    """How many tries fit in `total_wait` at the policy's nominal delays (for log lines)."""
    tries, waited = 1, 0.0
    while waited < total_wait and tries < 1000:
        waited += min(policy.cap, policy.base * policy.multiplier ** min(tries - 1, 64))
        tries += 1
    return tries


class AsyncDatabase:
    """One PostgreSQL, several named pools: a burst in one role cannot starve another."""

    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self._pools: dict[str, AsyncRolePool] = {}

    def pool(
        self, role: str = "default", *, min_size: int | None = None, max_size: int | None = None
    ) -> AsyncRolePool:
        """The pool for `role`, created on first use with its own size limits; `open()`
        opens it, or else its first checkout does."""
        existing = self._pools.get(role)
        if existing is None:
            existing = AsyncRolePool(
                role, self.conninfo, self.settings, min_size=min_size, max_size=max_size
            )
            self._pools[role] = existing
        return existing

    async def open(self, *roles: str, startup_wait: float | None = None) -> None:
        """Wait for the server once (for `startup_wait` seconds, default the setting's),
        then open the named pools (all created ones if none)."""
        await wait_until_reachable(self.conninfo, self.settings, startup_wait)
        for role in roles or tuple(self._pools):
            await self.pool(role)._start()

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    def stats(self) -> list[PoolStats]:
        return [pool.stats() for pool in self._pools.values()]
