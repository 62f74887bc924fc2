"""Reading a chunked job's progress back (async source).

`src/unbroken/chunks/_sync/progress.py` (`read_progress`) is generated from this file by
`scripts/gen_sync.py`; `Progress` and what `jobs.progress` holds are in
`unbroken.chunks.progress`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row

from unbroken.chunks.progress import Progress, progress_from_row
from unbroken.sql import queries


async def aread_progress(
    conn: psycopg.AsyncConnection[Any], job_id: int, *, schema: str = "unbroken"
) -> Progress | None:
    """The progress of job `job_id` (None if there is no such job)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(queries(schema)["job_progress_get"], {"id": job_id})
        return progress_from_row(await cur.fetchone())
