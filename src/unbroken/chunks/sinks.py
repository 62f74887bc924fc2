"""Writing a chunk: COPY, idempotent upsert, and a SQLAlchemy session, all in its transaction.

Table and column names are identifiers chosen at run time, so these statements are composed
with `psycopg.sql` (every name quoted as an identifier), not read from a `.sql` file.

Upsert loads the rows with COPY into a temporary table and merges them with one
`INSERT ... SELECT ... ON CONFLICT` statement: three round trips per chunk whatever its size,
any column types (the temporary table copies them from the target), and when a key appears
twice in one chunk the later row wins instead of the whole statement failing.

The SQLAlchemy session runs on the chunk's own connection: SQLAlchemy is handed a stand-in
whose commit, rollback and close do nothing, because the chunk's transaction (which also
saves the checkpoint) is the one that commits. `session.commit()` in a write function
therefore only flushes; the data becomes durable with the checkpoint.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from sqlalchemy import Connection as SAConnection
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

Rows = Iterable[Sequence[Any]]
_temp_names = itertools.count(1)


# --- statements ------------------------------------------------------------------------------
def table_name(table: str) -> sql.Identifier:
    """`"schema"."table"` from "schema.table" (or just `"table"`)."""
    return sql.Identifier(*table.split("."))


def _names(columns: Sequence[str]) -> sql.Composed:
    if not columns:
        raise ValueError("at least one column is needed")
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def copy_statement(table: str, columns: Sequence[str]) -> sql.Composed:
    """COPY table (columns) FROM STDIN."""
    return sql.SQL("COPY {} ({}) FROM STDIN").format(table_name(table), _names(columns))


def upsert_statements(
    table: str,
    columns: Sequence[str],
    key: Sequence[str],
    update: Sequence[str] | None,
    temp: str,
) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
    """(create the temporary table, COPY into it, merge it into `table`)."""
    missing = [k for k in key if k not in columns]
    if not key or missing:
        raise ValueError(f"upsert key {list(key)} must be non-empty and among the columns")
    updated = [c for c in columns if c not in key] if update is None else list(update)
    unknown = [c for c in updated if c not in columns]
    if unknown:
        raise ValueError(f"upsert update columns {unknown} are not among the columns")
    cols, keys, tmp = _names(columns), _names(key), sql.Identifier(temp)
    create = sql.SQL(
        "CREATE TEMPORARY TABLE {tmp} ON COMMIT DROP AS "
        "SELECT {cols}, 0::bigint AS unbroken_seq FROM {table} WITH NO DATA"
    ).format(tmp=tmp, cols=cols, table=table_name(table))
    copy = sql.SQL("COPY {tmp} ({cols}, unbroken_seq) FROM STDIN").format(tmp=tmp, cols=cols)
    action = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updated
            )
        )
        if updated
        else sql.SQL("DO NOTHING")
    )
    merge = sql.SQL(
        "INSERT INTO {table} ({cols}) "
        "SELECT DISTINCT ON ({keys}) {cols} FROM {tmp} ORDER BY {keys}, unbroken_seq DESC "
        "ON CONFLICT ({keys}) {action}"
    ).format(table=table_name(table), cols=cols, keys=keys, tmp=tmp, action=action)
    return create, copy, merge


def _temp_name() -> str:
    return f"unbroken_upsert_{next(_temp_names)}"


# --- sync ------------------------------------------------------------------------------------
def copy_rows(conn: psycopg.Connection[Any], table: str, columns: Sequence[str], rows: Rows) -> int:
    """COPY `rows` into `table`; returns how many were sent."""
    sent = 0
    # On the runtime's connections every statement, COPY included, has the pool's deadline.
    with conn.cursor() as cur, cur.copy(copy_statement(table, columns)) as copy:
        for row in rows:
            copy.write_row(row)
            sent += 1
    return sent


def upsert_rows(
    conn: psycopg.Connection[Any],
    table: str,
    columns: Sequence[str],
    rows: Rows,
    *,
    key: Sequence[str],
    update: Sequence[str] | None = None,
) -> int:
    """Insert `rows`, updating `update` (default: every non-key column) where `key` exists.

    Returns the number of rows inserted or updated. Runs inside the caller's transaction.
    """
    create, copy_sql, merge = upsert_statements(table, columns, key, update, _temp_name())
    with conn.cursor() as cur:
        cur.execute(create)
        with cur.copy(copy_sql) as copy:
            for seq, row in enumerate(rows):
                copy.write_row((*row, seq))
        cur.execute(merge)
        return cur.rowcount


# --- async -----------------------------------------------------------------------------------
async def copy_rows_async(
    conn: psycopg.AsyncConnection[Any], table: str, columns: Sequence[str], rows: Rows
) -> int:
    """`copy_rows` for an async connection."""
    sent = 0
    async with conn.cursor() as cur, cur.copy(copy_statement(table, columns)) as copy:
        for row in rows:
            await copy.write_row(row)
            sent += 1
    return sent


async def upsert_rows_async(
    conn: psycopg.AsyncConnection[Any],
    table: str,
    columns: Sequence[str],
    rows: Rows,
    *,
    key: Sequence[str],
    update: Sequence[str] | None = None,
) -> int:
    """`upsert_rows` for an async connection."""
    create, copy_sql, merge = upsert_statements(table, columns, key, update, _temp_name())
    async with conn.cursor() as cur:
        await cur.execute(create)
        async with cur.copy(copy_sql) as copy:
            for seq, row in enumerate(rows):
                await copy.write_row((*row, seq))
        await cur.execute(merge)
        return cur.rowcount


# --- SQLAlchemy ------------------------------------------------------------------------------
_lent: contextvars.ContextVar[Any] = contextvars.ContextVar("unbroken_lent_connection")
_engines: dict[str, Any] = {}


class _Lent:
    """The chunk's psycopg connection as SQLAlchemy sees it: everything passes through
    except ending the transaction or the connection, which belong to the chunk."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def commit(self) -> None:
        pass  # the chunk commits, together with its checkpoint

    def rollback(self) -> None:
        pass  # a failed write raises, and the chunk's transaction rolls back

    def close(self) -> None:
        pass  # the connection goes back to unbroken's pool, not SQLAlchemy's

    def add_notice_handler(self, handler: Any) -> None:
        pass  # added on every checkout, it would pile up on a pooled connection


class _AsyncLent(_Lent):
    async def commit(self) -> None:  # type: ignore[override]
        pass

    async def rollback(self) -> None:  # type: ignore[override]
        pass

    async def close(self) -> None:  # type: ignore[override]
        pass


def _engine() -> Engine:
    engine: Engine | None = _engines.get("sync")
    if engine is None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        # NullPool: SQLAlchemy keeps nothing; each session borrows the current chunk's
        # connection through the context variable. No hstore probe: it would open a savepoint.
        engine = create_engine(
            "postgresql+psycopg://",
            creator=lambda: _Lent(_lent.get()),
            poolclass=NullPool,
            use_native_hstore=False,
        )
        _engines["sync"] = engine
    return engine


def _async_engine() -> AsyncEngine:
    engine: AsyncEngine | None = _engines.get("async")
    if engine is None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        async def lend() -> Any:
            return _AsyncLent(_lent.get())

        engine = create_async_engine(
            "postgresql+psycopg://",
            async_creator=lend,
            poolclass=NullPool,
            use_native_hstore=False,
        )
        _engines["async"] = engine
    return engine


def orm_session(conn: psycopg.Connection[Any]) -> tuple[Session, SAConnection]:
    """A Session (expire_on_commit=False) on `conn`'s current transaction, and its
    SQLAlchemy connection. Flush the session and close both before the transaction ends."""
    from sqlalchemy.orm import Session

    token = _lent.set(conn)
    try:
        bound = _engine().connect()
    finally:
        _lent.reset(token)
    return Session(bind=bound, expire_on_commit=False), bound


async def orm_session_async(
    conn: psycopg.AsyncConnection[Any],
) -> tuple[AsyncSession, SAAsyncConnection]:
    """`orm_session` for an async connection: an AsyncSession."""
    from sqlalchemy.ext.asyncio import AsyncSession

    token = _lent.set(conn)
    try:
        bound = await _async_engine().connect()
    finally:
        _lent.reset(token)
    return AsyncSession(bind=bound, expire_on_commit=False), bound
