"""A chunked task for tests that run real worker processes: `--app tests.apps.chunk_app:app`.

`chunked_copy` (and `chunked_copy_sync`, its sync twin) copies a slow, deterministic,
seekable paged source (record n is `(n, "record-n")` for n in 1..items, in pages of
`page_size`, each behind `latency_ms`) into `chunk_sink` in checkpointed chunks
(`end_cursor_none`: the last page's cursor is None, as many APIs end their pages). The
sink's upsert counts writes per record, so a second write of any record shows as
`writes = 2`. `SETUP_SQL` (run by the test in its database) creates the sink and
`checkpoint_log`, which a trigger fills with every committed change of a job's progress:
the history of its checkpoints, exactly as committed (a rolled-back chunk leaves no trace
there either). Fenced chunk commits are logged ("write.fenced"): the runtime only emits
them as telemetry.

Settings come from UNBROKEN_* variables (the test sets the database and short leases).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import unbroken
from unbroken import (
    AsyncChunk,
    Chunk,
    Page,
    Progress,
    arun_chunks,
    current_job,
    run_chunks,
    telemetry,
)

app = unbroken.App()
logger = logging.getLogger("chunk_app")
TASK = "chunked_copy"
TASK_SYNC = "chunked_copy_sync"
Record = tuple[int, str]

SETUP_SQL = """
CREATE TABLE chunk_sink (
    id         integer PRIMARY KEY,
    payload    text NOT NULL,
    written_by integer NOT NULL,            -- the attempt that first wrote it
    writes     integer NOT NULL DEFAULT 1   -- how often it was written: must stay 1
);
CREATE TABLE checkpoint_log (
    n          bigserial PRIMARY KEY,
    job_id     bigint NOT NULL,
    attempt    integer NOT NULL,
    worker_id  text,
    seq        bigint,
    position   bigint,
    page_skip  bigint,
    checkpoint jsonb,
    done       boolean,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION log_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO checkpoint_log (job_id, attempt, worker_id, seq, position, page_skip,
                                checkpoint, done)
    VALUES (NEW.id, NEW.attempt, NEW.worker_id, (NEW.progress ->> 'seq')::bigint,
            (NEW.progress ->> 'position')::bigint, (NEW.progress ->> 'page_skip')::bigint,
            NEW.checkpoint, (NEW.progress ->> 'done')::boolean);
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_checkpoint_log AFTER UPDATE OF progress ON unbroken.jobs
    FOR EACH ROW WHEN (NEW.progress IS DISTINCT FROM OLD.progress)
    EXECUTE FUNCTION log_checkpoint();
"""

UPSERT = b"""
INSERT INTO chunk_sink (id, payload, written_by)
SELECT id, payload, %s FROM unnest(%s::int[], %s::text[]) AS r(id, payload)
ON CONFLICT (id) DO UPDATE SET writes = chunk_sink.writes + 1
"""


def record(n: int) -> Record:
    """The source's record at (0-based) position n."""
    return (n + 1, f"record-{n + 1}")


class PagedSource:
    """A paged API: `pages(cursor)` seeks to `cursor` (a position) like Jira's startAt.

    `stall_at`: before serving the first page at or after this position (or before ending,
    when it is the source's end), log a line and wait `stall_seconds` (a slow page the test
    can pause the worker in: no connection is held and no transaction is open while a
    source is read). `end_cursor_none`: the last page's cursor is None (no next page).
    """

    def __init__(
        self,
        items: int,
        page_size: int,
        latency: float,
        stall_at: int | None = None,
        stall_seconds: float = 0.0,
        end_cursor_none: bool = False,
    ) -> None:
        self.items = items
        self.end_cursor_none = end_cursor_none
        self.page_size = page_size
        self.latency = latency
        self.stall_at = stall_at
        self.stall_seconds = stall_seconds
        self.pages_read = 0
        self.opened_at: list[int] = []  # the cursor of every (re)opening of the source

    async def pages(self, cursor: Any) -> AsyncIterator[Page[Record]]:
        position = int(cursor or 0)
        self.opened_at.append(position)
        while position < self.items:
            await asyncio.sleep(self.latency)
            if self._stalls_at(position):  # the page is ready once the stall is over
                await asyncio.sleep(self.stall_seconds)
            yield self._page(position)
            position += self.page_size
        if self._stalls_at(position):  # the source's end is found once the stall is over
            await asyncio.sleep(self.stall_seconds)

    def pages_sync(self, cursor: Any) -> Iterator[Page[Record]]:
        """`pages` for sync tasks (it sleeps in the job's thread)."""
        position = int(cursor or 0)
        self.opened_at.append(position)
        while position < self.items:
            time.sleep(self.latency)
            if self._stalls_at(position):
                time.sleep(self.stall_seconds)
            yield self._page(position)
            position += self.page_size
        if self._stalls_at(position):
            time.sleep(self.stall_seconds)

    def _page(self, position: int) -> Page[Record]:
        self.pages_read += 1
        end = min(position + self.page_size, self.items)
        cursor = None if end >= self.items and self.end_cursor_none else end
        return Page([record(n) for n in range(position, end)], cursor=cursor, total=self.items)

    def _stalls_at(self, position: int) -> bool:
        if self.stall_at is None or position < self.stall_at:
            return False
        self.stall_at = None
        job = current_job()
        logger.warning(
            "chunk_app: job %d attempt %d stalls %.1f s before the page (or the end) at %d",
            job.job_id,
            job.attempt,
            self.stall_seconds,
            position,
        )
        return True


_observing = False


def _observe() -> None:
    """Log fenced writes (a telemetry event, not logged by the runtime) once per process."""
    global _observing
    if _observing:
        return
    _observing = True

    def log_event(name: str, fields: dict[str, Any]) -> None:
        if name == "write.fenced":
            logger.warning("chunk_app: write.fenced %s", fields)

    telemetry.subscribe(log_event)


@app.task(name=TASK, max_attempts=5, retry=unbroken.Retry(base=0.2, cap=1.0))
async def chunked_copy(
    items: int = 5000,
    page_size: int = 40,
    latency_ms: float = 5.0,
    chunk_size: int = 250,
    write_delay: float = 0.0,
    stall_at: int | None = None,
    stall_seconds: float = 0.0,
    end_cursor_none: bool = False,
    linger_seconds: float = 0.0,
) -> dict[str, Any]:
    """Copy the source into chunk_sink. `write_delay` keeps each chunk's transaction open
    that much longer (a slow sink); the stall happens on attempt 1 only, and so does the
    linger: `linger_seconds` after the run returned, before the task does."""
    _observe()
    job = current_job()
    stall = stall_at if job.attempt == 1 else None
    source = PagedSource(items, page_size, latency_ms / 1000, stall, stall_seconds, end_cursor_none)

    async def write(chunk: AsyncChunk[Record]) -> None:
        await chunk.conn.execute(UPSERT, _rows(chunk.items, job.attempt))
        if write_delay:
            await asyncio.sleep(write_delay)

    progress = await arun_chunks(source.pages, write, chunk_size=chunk_size)
    if linger_seconds and _lingers(progress):
        await asyncio.sleep(linger_seconds)
    return _result(source, progress)


@app.task(name=TASK_SYNC, max_attempts=5, retry=unbroken.Retry(base=0.2, cap=1.0))
def chunked_copy_sync(
    items: int = 5000,
    page_size: int = 40,
    latency_ms: float = 5.0,
    chunk_size: int = 250,
    write_delay: float = 0.0,
    stall_at: int | None = None,
    stall_seconds: float = 0.0,
    end_cursor_none: bool = False,
    linger_seconds: float = 0.0,
) -> dict[str, Any]:
    """`chunked_copy` as a sync task (run_chunks, in the worker's threads)."""
    _observe()
    job = current_job()
    stall = stall_at if job.attempt == 1 else None
    source = PagedSource(items, page_size, latency_ms / 1000, stall, stall_seconds, end_cursor_none)

    def write(chunk: Chunk[Record]) -> None:
        chunk.conn.execute(UPSERT, _rows(chunk.items, job.attempt))
        if write_delay:
            time.sleep(write_delay)

    progress = run_chunks(source.pages_sync, write, chunk_size=chunk_size)
    if linger_seconds and _lingers(progress):
        time.sleep(linger_seconds)
    return _result(source, progress)


def _lingers(progress: Progress) -> bool:
    """On attempt 1: log that the run is over and the task lingers before returning."""
    job = current_job()
    if job.attempt != 1:
        return False
    logger.warning(
        "chunk_app: job %d attempt %d lingers after its run (position %d, done %s)",
        job.job_id,
        job.attempt,
        progress.position,
        progress.done,
    )
    return True


def _rows(items: list[Record], attempt: int) -> list[Any]:
    return [attempt, [r[0] for r in items], [r[1] for r in items]]


def _result(source: PagedSource, progress: Progress) -> dict[str, Any]:
    job = current_job()
    return {
        "attempt": job.attempt,
        "worker": job.worker_id,
        "pid": os.getpid(),
        "opened_at": source.opened_at,  # where each (re)opening of the source started
        "pages_read": source.pages_read,  # by this attempt
        "processed": progress.processed,
        "position": progress.position,
        "chunks": progress.chunks,
    }
