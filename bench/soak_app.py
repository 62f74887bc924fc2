"""The soak's tasks: chunked ETL syncs plus a stream of small jobs (see bench/chaos.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import unbroken
from unbroken import AsyncChunk, Page, arun_chunks

app = unbroken.App()
ITEMS_PER_SYNC = 20_000
PAGE = 100

SINK_DDL = b"""
CREATE SCHEMA IF NOT EXISTS soak;
CREATE TABLE IF NOT EXISTS soak.records (
    project integer NOT NULL,
    id      integer NOT NULL,
    payload text NOT NULL,
    writes  integer NOT NULL DEFAULT 1,  -- a second write of a record shows here
    PRIMARY KEY (project, id)
);
CREATE TABLE IF NOT EXISTS soak.small_runs (
    job_id  bigint NOT NULL,
    attempt integer NOT NULL,
    PRIMARY KEY (job_id, attempt)  -- one attempt never completes twice
);
"""

UPSERT = b"""
INSERT INTO soak.records (project, id, payload)
SELECT %s, * FROM unnest(%s::int[], %s::text[])
ON CONFLICT (project, id) DO UPDATE SET writes = soak.records.writes + 1
"""


async def pages(start_at: int | None) -> AsyncIterator[Page[int]]:
    position = start_at or 0
    while position < ITEMS_PER_SYNC:
        await asyncio.sleep(random.uniform(0.005, 0.02))  # a slow API
        end = min(position + PAGE, ITEMS_PER_SYNC)
        yield Page(list(range(position, end)), cursor=end, total=ITEMS_PER_SYNC)
        position = end


@app.task(queue="etl", max_attempts=25, retry=unbroken.Retry(base=0.5, cap=5), chunk_size=1000)
async def etl(project: int) -> int:
    async def write(chunk: AsyncChunk[int]) -> None:
        ids = chunk.items
        await chunk.conn.execute(UPSERT, [project, ids, [f"record {i}" for i in ids]])

    progress = await arun_chunks(pages, write)
    return progress.processed


@app.task(queue="small", max_attempts=25, retry=unbroken.Retry(base=0.2, cap=3))
async def small(n: int) -> None:
    job = unbroken.current_job()
    assert job.adb is not None
    async with job.adb.pool("chunks").connection() as conn:
        await conn.execute(
            b"INSERT INTO soak.small_runs VALUES (%s, %s)", [job.job_id, job.attempt]
        )
