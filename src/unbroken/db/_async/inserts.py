"""Writing job rows: the async source of the enqueue inserts (the sync form is generated).

One statement for one job; COPY with reserved ids for a batch without unique keys, one
multi-row statement when unique keys need ON CONFLICT.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection

from unbroken.enqueue import JobSpec, copy_pieces, copy_query_name, many_params
from unbroken.errors import EnqueueError
from unbroken.sql import Queries


async def insert_one(conn: AsyncConnection[Any], queries: Queries, row: JobSpec) -> int:
    """The new job's id, or the live job's id when its unique key is taken."""
    for _ in range(2):
        cur = await conn.execute(queries["job_insert"], row.params())
        found = await cur.fetchone()
        if found is not None:
            return int(found[0])
        # A concurrent enqueue of the same unique key committed after our snapshot:
        # a second statement sees it.
    raise EnqueueError(f"task {row.task}: unique key {row.unique_key!r} is contended")


async def insert_many(
    conn: AsyncConnection[Any], queries: Queries, rows: Sequence[JobSpec]
) -> list[int]:
    """Ids of the jobs written (a row whose unique key is live is skipped)."""
    if not rows:
        return []
    if any(r.unique_key is not None or r.limit_key is not None for r in rows):
        # Unique keys need ON CONFLICT, which COPY cannot do, and COPY's columns have no
        # limit key (the keyless batch pays nothing for it): one multi-row statement.
        cur = await conn.execute(queries["job_insert_many"], many_params(rows), prepare=False)
        return [r[0] for r in await cur.fetchall()]
    cur = await conn.execute(queries["job_reserve_ids"], {"n": len(rows)})
    ids = [r[0] for r in await cur.fetchall()]
    name = copy_query_name(rows)
    async with conn.cursor().copy(queries[name]) as copy:
        # Piece by piece: the server parses one piece while the next is formatted.
        for piece in copy_pieces(name, ids, rows, datetime.now(UTC)):
            await copy.write(piece)
    return ids


async def insert_workflow(
    conn: AsyncConnection[Any], queries: Queries, params: dict[str, Any]
) -> tuple[int, list[int]]:
    """Write a workflow (Workflow.params()) in one statement: its id and its jobs' ids."""
    cur = await conn.execute(queries["workflow_insert"], params, prepare=False)
    row = await cur.fetchone()
    if row is None:  # the statement always returns its one row
        raise EnqueueError(f"workflow {params['name']}: nothing was written")
    return int(row[0]), [int(i) for i in row[1]]
