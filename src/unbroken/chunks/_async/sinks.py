"""Writing a chunk through its connection: COPY, upsert, a SQLAlchemy session (async source).

`src/unbroken/chunks/_sync/sinks.py` is generated from this file by `scripts/gen_sync.py`
(a test fails if it is stale): `acopy_rows` becomes `copy_rows`, `aupsert_rows`
`upsert_rows`, `aorm_session` `orm_session`. The statements and the connection SQLAlchemy
is lent are shared, in `unbroken.chunks.sinks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from unbroken.chunks.sinks import (
    Rows,
    aorm_engine,
    copy_statement,
    lent,
    temp_name,
    upsert_statements,
)

if TYPE_CHECKING:
    from unbroken.chunks.sinks import AsyncSession, SAAsyncConnection


async def acopy_rows(
    conn: psycopg.AsyncConnection[Any], table: str, columns: Sequence[str], rows: Rows
) -> int:
    """COPY `rows` into `table`; returns how many were sent."""
    sent = 0
    # On the runtime's connections every statement, COPY included, has the pool's deadline.
    async with conn.cursor() as cur, cur.copy(copy_statement(table, columns)) as copy:
        for row in rows:
            await copy.write_row(row)
            sent += 1
    return sent


async def aupsert_rows(
    conn: psycopg.AsyncConnection[Any],
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
    create, copy_sql, merge = upsert_statements(table, columns, key, update, temp_name())
    async with conn.cursor() as cur:
        await cur.execute(create)
        async with cur.copy(copy_sql) as copy:
            for seq, row in enumerate(rows):
                await copy.write_row((*row, seq))
        await cur.execute(merge)
        return cur.rowcount


async def aorm_session(
    conn: psycopg.AsyncConnection[Any],
) -> tuple[AsyncSession, SAAsyncConnection]:
    """A session (expire_on_commit=False) on `conn`'s current transaction, and its
    SQLAlchemy connection. Flush the session and close both before the transaction ends."""
    engine, session = aorm_engine()
    token = lent.set(conn)
    try:
        bound = await engine.connect()
    finally:
        lent.reset(token)
    return session(bind=bound, expire_on_commit=False), bound
