"""Writing a chunk: COPY, idempotent upsert, and a SQLAlchemy session, all in its transaction.

This module holds what the async and sync forms share: the statements, and the stand-in
connection SQLAlchemy is lent. The functions that run them on a connection (`acopy_rows`,
`aupsert_rows`, `aorm_session`) are in `_async/sinks.py`, and their sync twins (`copy_rows`,
`upsert_rows`, `orm_session`) are generated from it into `_sync/sinks.py`.

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
from typing import TYPE_CHECKING, Any, TypeAlias

from psycopg import sql

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
    from sqlalchemy.orm import Session as Session

    # Exported for _async/ and _sync/, where the generator turns `AsyncSession` into
    # `Session` (and so on): an import from sqlalchemy.ext.asyncio would not survive that.
    SAConnection: TypeAlias = Connection
    SAAsyncConnection: TypeAlias = AsyncConnection

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


def temp_name() -> str:
    """A name for an upsert's temporary table, new in this process."""
    return f"unbroken_upsert_{next(_temp_names)}"


# --- SQLAlchemy ------------------------------------------------------------------------------
# The connection a session being opened borrows (set around `engine.connect()`).
lent: contextvars.ContextVar[Any] = contextvars.ContextVar("unbroken_lent_connection")
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


def orm_engine() -> tuple[Engine, type[Session]]:
    """The engine through which sync sessions borrow the chunk's connection, and their
    class. NullPool: SQLAlchemy keeps nothing; each session borrows the connection set in
    `lent`. No hstore probe: it would open a savepoint."""
    engine: Engine | None = _engines.get("sync")
    if engine is None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(
            "postgresql+psycopg://",
            creator=lambda: _Lent(lent.get()),
            poolclass=NullPool,
            use_native_hstore=False,
        )
        _engines["sync"] = engine
    from sqlalchemy.orm import Session

    return engine, Session


def aorm_engine() -> tuple[AsyncEngine, type[AsyncSession]]:
    """`orm_engine` for async sessions: an AsyncEngine, and AsyncSession."""
    engine: AsyncEngine | None = _engines.get("async")
    if engine is None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        async def lend() -> Any:
            return _AsyncLent(lent.get())

        engine = create_async_engine(
            "postgresql+psycopg://",
            async_creator=lend,
            poolclass=NullPool,
            use_native_hstore=False,
        )
        _engines["async"] = engine
    from sqlalchemy.ext.asyncio import AsyncSession

    return engine, AsyncSession
