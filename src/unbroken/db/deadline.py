"""A client-side deadline on every statement, for the network that silently drops packets.

Keepalives and server timeouts do not help when a proxy or NAT keeps the client's side of
the socket healthy while nothing reaches the server: the query waits forever. Every
cursor on unbroken's pools registers its socket with one watchdog thread; if a statement
outlives its deadline, the watchdog shuts the socket down, the blocked read returns, and
the caller gets `StatementDeadline`. The connection is then broken, so the pool drops it.

One thread serves sync and async connections alike, and a statement costs two dict
operations, so the deadline can stay on for every statement.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.abc import Params, Query
from psycopg.copy import AsyncCopy, AsyncWriter, Copy, Writer
from psycopg.pq import TransactionStatus
from psycopg.rows import Row
from psycopg.transaction import AsyncTransaction, Transaction

from unbroken.errors import StatementDeadline

logger = logging.getLogger("unbroken.db")
IDLE = TransactionStatus.IDLE


class _Watchdog:
    """Shuts down the socket of any statement past its deadline."""

    def __init__(self, tick: float = 0.25) -> None:
        self._tick = tick
        self._watched: dict[int, tuple[float, int]] = {}  # token -> (expires, fd)
        self._severed: set[int] = set()
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, fd: int, seconds: float) -> int:
        if self._thread is None:
            self._start()
        token = next(self._tokens)
        self._watched[token] = (time.monotonic() + seconds, fd)
        return token

    def release(self, token: int) -> bool:
        """Stop watching; True if the watchdog had severed this statement's socket."""
        with self._lock:
            self._watched.pop(token, None)
            if token in self._severed:
                self._severed.discard(token)
                return True
        return False

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="unbroken-deadline", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            expired = [t for t, (exp, _) in list(self._watched.items()) if exp <= now]
            for token in expired:
                # Under the lock, so release() cannot return and let the fd be reused
                # by another socket between our check and the shutdown.
                with self._lock:
                    entry = self._watched.pop(token, None)
                    if entry is None:
                        continue
                    self._severed.add(token)
                    _shutdown(entry[1])


def _shutdown(fd: int) -> None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
        logger.warning("statement passed its deadline: connection severed")
    except OSError:
        pass
    finally:
        sock.detach()  # the fd belongs to libpq


watchdog = _Watchdog()


@contextmanager
def deadline(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], seconds: float
) -> Iterator[None]:
    """Sever `conn` if the body runs longer than `seconds`; raise StatementDeadline then."""
    try:
        fd = conn.fileno()
    except psycopg.Error:
        yield  # closed connection: the statement will fail on its own
        return
    token = watchdog.watch(fd, seconds)
    try:
        yield
    except psycopg.OperationalError as exc:
        if watchdog.release(token):
            raise StatementDeadline(
                f"no answer from the server within {seconds:g} s; connection dropped"
            ) from exc
        raise
    finally:
        watchdog.release(token)


# --- per-transaction settings (PgBouncer in transaction mode) -------------------------------
# A connection with `transaction_settings` (db/conninfo.py: transaction_statement) gives every
# transaction the server settings, which end with it:
# - a statement in autocommit mode is its own transaction: it goes in one pipeline after the
#   settings, both in the implicit transaction that the pipeline's one Sync ends: no round
#   trip added;
# - `conn.transaction()` runs them right after its BEGIN: one round trip per transaction.
#   (Pipelined with the first statement instead, the server would not arm
#   idle_in_transaction_session_timeout until the next one: psycopg ends a pipeline with a
#   Flush after its Sync, and any message after the Sync disarms the idle timer.)
# - COPY and executemany cannot share a pipeline: in autocommit mode they run in a
#   transaction (which changes nothing: each was all-or-nothing already).


def _settings_due(conn: Any, query: Any = None) -> bytes | None:
    """The settings statement, if the statement about to run is a transaction of its own."""
    settings: bytes | None = getattr(conn, "transaction_settings", None)
    if settings is None or query == "":  # "": the pool's liveness check runs nothing
        return None
    if conn._pipeline is not None or conn.pgconn.transaction_status != IDLE:
        return None
    return settings


class DeadlineCursor(psycopg.Cursor[Row]):
    """A cursor whose execute/executemany/copy give up after the connection's deadline.

    A COPY is one statement from start to the server's answer, so the deadline covers the
    whole block: the rows the caller writes in it too."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> DeadlineCursor[Row]:
        with deadline(self._conn, _seconds(self._conn)):
            settings = _settings_due(self._conn, query)
            if settings is None:
                super().execute(query, params, **kwargs)
            else:
                with self._conn.pipeline():
                    psycopg.Cursor(self._conn).execute(settings)
                    super().execute(query, params, **kwargs)
        return self

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        with deadline(self._conn, _seconds(self._conn)), self._settings_first():
            super().executemany(query, params_seq, **kwargs)

    @contextmanager
    def copy(
        self, statement: Query, params: Params | None = None, *, writer: Writer | None = None
    ) -> Iterator[Copy]:
        with (
            deadline(self._conn, _seconds(self._conn)),
            self._settings_first(),
            super().copy(statement, params, writer=writer) as copy,
        ):
            yield copy

    @contextmanager
    def _settings_first(self) -> Iterator[None]:
        if _settings_due(self._conn) is None:
            yield
        else:
            with self._conn.transaction():  # which sets them
                yield


class AsyncDeadlineCursor(psycopg.AsyncCursor[Row]):
    async def execute(
        self, query: Any, params: Any = None, **kwargs: Any
    ) -> AsyncDeadlineCursor[Row]:
        with deadline(self._conn, _seconds(self._conn)):
            settings = _settings_due(self._conn, query)
            if settings is None:
                await super().execute(query, params, **kwargs)
            else:
                async with self._conn.pipeline():
                    await psycopg.AsyncCursor(self._conn).execute(settings)
                    await super().execute(query, params, **kwargs)
        return self

    async def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        with deadline(self._conn, _seconds(self._conn)):
            async with self._settings_first():
                await super().executemany(query, params_seq, **kwargs)

    @asynccontextmanager
    async def copy(
        self, statement: Query, params: Params | None = None, *, writer: AsyncWriter | None = None
    ) -> AsyncIterator[AsyncCopy]:
        with deadline(self._conn, _seconds(self._conn)):
            async with (
                self._settings_first(),
                super().copy(statement, params, writer=writer) as copy,
            ):
                yield copy

    @asynccontextmanager
    async def _settings_first(self) -> AsyncIterator[None]:
        if _settings_due(self._conn) is None:
            yield
        else:
            async with self._conn.transaction():  # which sets them
                yield


def _seconds(conn: Any) -> float:
    return float(getattr(conn, "statement_deadline", 300.0))


class DeadlineConnection(psycopg.Connection[Row]):
    """Connection used by unbroken's sync pools: every cursor has a deadline."""

    statement_deadline: float = 300.0
    transaction_settings: bytes | None = None  # see "per-transaction settings" above

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = DeadlineCursor

    @contextmanager
    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> Iterator[Transaction]:
        outermost = self.pgconn.transaction_status == IDLE
        with super().transaction(savepoint_name, force_rollback) as tx:
            if outermost and self.transaction_settings is not None:
                self.cursor().execute(self.transaction_settings)  # with the deadline
            yield tx


class AsyncDeadlineConnection(psycopg.AsyncConnection[Row]):
    """Connection used by unbroken's async pools: every cursor has a deadline."""

    statement_deadline: float = 300.0
    transaction_settings: bytes | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = AsyncDeadlineCursor

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[AsyncTransaction]:
        outermost = self.pgconn.transaction_status == IDLE
        async with super().transaction(savepoint_name, force_rollback) as tx:
            if outermost and self.transaction_settings is not None:
                await self.cursor().execute(self.transaction_settings)
            yield tx
