"""Chunked runs: a large source processed in chunks, each committed with the job's checkpoint.

Inside a task:

    async def write(chunk: AsyncChunk[Issue]) -> None:
        await chunk.upsert("issues", ["id", "title"], [(i.id, i.title) for i in chunk.items],
                           key=["id"])

    await run_chunks(lambda cursor: jira.issues(start_at=cursor or 0), write, chunk_size=500)

What the runtime guarantees, chunk by chunk:
- the chunk's writes, the checkpoint and the progress counters commit in ONE transaction on a
  connection from the worker's "chunks" pool; nothing spans two chunks;
- the source is read with no connection held and no transaction open (it may be a slow API);
- the commit is fenced: it happens only while this worker holds the job's lease for this
  attempt, else it rolls back and `LeaseLost` is raised (a rescued job's old worker can
  never commit a chunk);
- a lost connection (restart, terminated backend, half-open network) retries the same chunk
  on a fresh connection with backoff, without failing the job; a commit whose answer was
  lost is looked up, never written twice; only `retries` failures in a row fail the attempt;
- a retried or rescued job resumes after its last committed chunk: a source given as a
  function receives the checkpoint and seeks, any other source has its done items skipped;
  a checkpoint of None means the source's start (a last page may have no next cursor: a
  chunk ending with it reads on to the end first and commits `done`, and a run resumed at
  None skips everything done), so nothing is written twice and a finished run reads nothing;
- the chunk size is read between chunks: the job's own `chunk_size`, else the task's
  run-time setting (`task_settings`), else `chunk_size=` here, else `@app.task(chunk_size=)`;
- chunk commits do not wait for their WAL flush (the run's last one does, and flushes all
  before it): a database crash can undo the latest chunks only together with their
  checkpoints, and the run then reads the source again from the checkpoint that survived.
  `flush_each_chunk=True` makes every commit wait instead.

The algorithm lives once, in `unbroken.chunkstate`; the two runners below only perform its
effects (`run_chunks` with await, `run_chunks_sync` without).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, overload

from psycopg import AsyncConnection, Connection
from psycopg.rows import tuple_row

from unbroken.chunks import sinks
from unbroken.chunks.progress import Progress
from unbroken.chunks.state import (
    WRITE,
    BadRecords,
    ChunkRun,
    Effect,
    Fetch,
    Page,
    PendingChunk,
    Read,
    Rewind,
    Sleep,
    Transact,
)
from unbroken.context import JobContext, current_job
from unbroken.errors import BadRecordsExceeded, CommitsLost, UnbrokenError

if TYPE_CHECKING:
    from sqlalchemy import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from unbroken.db._async.pool import AsyncRolePool
    from unbroken.db._sync.pool import RolePool

__all__ = [
    "CHUNKS_POOL",
    "AsyncChunk",
    "BadRecords",
    "BadRecordsExceeded",
    "Chunk",
    "CommitsLost",
    "Page",
    "run_chunks",
    "run_chunks_sync",
]

CHUNKS_POOL = "chunks"  # the pool role chunks commit through; workers open it at start
R = TypeVar("R")
T = TypeVar("T")

Yields: TypeAlias = Iterable[R | Page[R]] | AsyncIterable[R | Page[R]]
# Items or pages; or a function of the last checkpoint (None at first) returning them.
Source: TypeAlias = Yields[R] | Callable[[Any], Yields[R]]


@dataclass(eq=False)
class _ChunkBase(Generic[T]):
    items: list[T] = field(repr=False)  # this chunk's (valid) items
    number: int  # 1-based, in this run
    position: int  # items of the source consumed before this chunk
    checkpoint: Any  # the checkpoint this chunk commits
    job: JobContext = field(repr=False)


@dataclass(eq=False)
class AsyncChunk(_ChunkBase[T]):
    """One chunk inside its transaction. Write through `conn` or the helpers; the runtime
    commits the writes with the checkpoint (never commit or roll back `conn` yourself).

    A write function may run more than once for the same chunk (after a lost connection),
    always in a fresh transaction: it must write only through this connection.
    """

    conn: AsyncConnection[Any] = field(kw_only=True, repr=False)
    _orm: tuple[AsyncSession, SAAsyncConnection] | None = field(default=None, kw_only=True)

    async def copy(self, table: str, columns: Sequence[str], rows: sinks.Rows) -> int:
        """COPY `rows` into `table` (the fastest way in); returns how many were sent."""
        return await sinks.copy_rows_async(self.conn, table, columns, rows)

    async def upsert(
        self,
        table: str,
        columns: Sequence[str],
        rows: sinks.Rows,
        *,
        key: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> int:
        """Insert, or update `update` (default: all non-key columns) where `key` exists."""
        return await sinks.upsert_rows_async(
            self.conn, table, columns, rows, key=key, update=update
        )

    async def session(self) -> AsyncSession:
        """A SQLAlchemy AsyncSession on this chunk's transaction (expire_on_commit=False)."""
        if self._orm is None:
            self._orm = await sinks.orm_session_async(self.conn)
        return self._orm[0]

    async def _finish(self, ok: bool) -> None:
        if self._orm is not None:
            session, bound = self._orm
            self._orm = None
            try:
                if ok:
                    await session.flush()  # ORM writes join the commit with the checkpoint
            finally:
                await session.close()
                await bound.close()


@dataclass(eq=False)
class Chunk(_ChunkBase[T]):
    """`AsyncChunk` for sync tasks (`run_chunks_sync`)."""

    conn: Connection[Any] = field(kw_only=True, repr=False)
    _orm: tuple[Session, SAConnection] | None = field(default=None, kw_only=True)

    def copy(self, table: str, columns: Sequence[str], rows: sinks.Rows) -> int:
        """COPY `rows` into `table` (the fastest way in); returns how many were sent."""
        return sinks.copy_rows(self.conn, table, columns, rows)

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        rows: sinks.Rows,
        *,
        key: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> int:
        """Insert, or update `update` (default: all non-key columns) where `key` exists."""
        return sinks.upsert_rows(self.conn, table, columns, rows, key=key, update=update)

    def session(self) -> Session:
        """A SQLAlchemy Session on this chunk's transaction (expire_on_commit=False)."""
        if self._orm is None:
            self._orm = sinks.orm_session(self.conn)
        return self._orm[0]

    def _finish(self, ok: bool) -> None:
        if self._orm is not None:
            session, bound = self._orm
            self._orm = None
            try:
                if ok:
                    session.flush()
            finally:
                session.close()
                bound.close()


def _chunk_fields(pending: PendingChunk[Any], job: JobContext) -> dict[str, Any]:
    return {
        "items": pending.items,
        "number": pending.number,
        "position": pending.base,
        "checkpoint": pending.checkpoint,
        "job": job,
    }


def _new_run(job: JobContext, source: Any, total: int | None, **options: Any) -> ChunkRun[Any]:
    seekable = callable(source) and not isinstance(source, Iterable | AsyncIterable)
    if total is None and not seekable and isinstance(source, Sized):
        total = len(source)
    return ChunkRun(job, seekable, total=total, **options)


def _open(source: Any, run: ChunkRun[Any]) -> Iterator[Any] | AsyncIterator[Any]:
    opened = source(run.seek) if run.seekable else source
    if isinstance(opened, AsyncIterable):
        return aiter(opened)
    if isinstance(opened, Iterable):
        return iter(opened)
    raise TypeError(f"a chunk source must be iterable or async iterable, not {type(opened)}")


def _fill(run: ChunkRun[Any], it: Iterator[Any]) -> None:
    """Read from a sync iterator until the chunk is full or the source ends."""
    while (want := run.want()) > 0:
        got = list(islice(it, want))
        run.add(got)
        if len(got) < want:
            run.exhausted()


async def _fill_async(run: ChunkRun[Any], it: AsyncIterator[Any]) -> None:
    """Read from an async iterator until the chunk is full or the source ends."""
    while (want := run.want()) > 0:
        got = []
        async for item in it:  # `break` leaves it open: the next chunk goes on from here
            got.append(item)
            if len(got) >= want:
                break
        run.add(got)
        if len(got) < want:
            run.exhausted()


# --- the async runner ------------------------------------------------------------------------
@overload
async def run_chunks(
    source: Source[R],
    write: Callable[[AsyncChunk[R]], Awaitable[None]],
    *,
    validate: None = None,
    chunk_size: int | None = None,
    cursor: Callable[[R], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = ...,
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
) -> Progress: ...
@overload
async def run_chunks(
    source: Source[R],
    write: Callable[[AsyncChunk[T]], Awaitable[None]],
    *,
    validate: Callable[[R], T],
    chunk_size: int | None = None,
    cursor: Callable[[R], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = ...,
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
) -> Progress: ...
async def run_chunks(
    source: Any,
    write: Callable[[AsyncChunk[Any]], Awaitable[None]],
    *,
    validate: Callable[[Any], Any] | None = None,
    chunk_size: int | None = None,
    cursor: Callable[[Any], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = BadRecords(),
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
) -> Progress:
    """Process `source` in chunks inside the current (async) job; returns the final progress.

    source: items or `Page`s (iterable or async iterable), or a function of the last
        checkpoint returning them: such a source seeks on resume instead of being skipped.
        Called with None, it must start from the beginning.
    write: `await write(chunk)` writes one chunk through `chunk.conn`, `chunk.copy`,
        `chunk.upsert` or `await chunk.session()`; it may run again for the same chunk.
    validate: maps each raw item to the item `write` gets; items it raises on are skipped
        and counted, within `bad_records` (by default none is allowed).
    chunk_size: the task's default; the job's `chunk_size` and the task's run-time setting
        override it, read between chunks.
    cursor: the checkpoint after an item (for example its id); by default the count of
        items consumed. Paged sources checkpoint the page cursors instead.
    total: how many items the source holds, for the ETA (`len(source)` when it has one); a
        `Page.total` replaces it. Progress never shows a total below the items consumed,
        and once the run is done the total is their count.
    retries: failed tries of one chunk in a row (transient errors) before the attempt fails.
    name: names this run when a job has several (say "issues", then "changelogs"): each
        keeps its own checkpoint, and a retried job skips the runs it already finished.
    flush_each_chunk: make every chunk's commit wait for its WAL flush. By default only the
        run's last commit waits (and flushes all before it): a database crash can then undo
        the latest chunks, each together with its checkpoint, and the run reads the source
        again from the checkpoint that survived, so nothing is lost or written twice.
    """
    job = current_job()
    if job.adb is None:
        raise UnbrokenError("run_chunks() needs an async task; use run_chunks_sync() in sync tasks")
    pool = job.adb.pool(CHUNKS_POOL)
    run = _new_run(
        job,
        source,
        total,
        chunk_size=chunk_size,
        cursor=cursor,
        validate=validate,
        bad=bad_records,
        retries=retries,
        name=name,
        flush_each_chunk=flush_each_chunk,
    )
    steps = run.steps()
    it: Iterator[Any] | AsyncIterator[Any] | None = None
    result: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = steps.send(result) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            result, error = None, None
            try:
                if isinstance(effect, Read):
                    if it is None:
                        it = _open(source, run)
                    if isinstance(it, AsyncIterator):
                        await _fill_async(run, it)
                    elif isinstance(source, Sequence):
                        _fill(run, it)  # in memory: nothing to wait for
                    else:  # a blocking iterator must not stall the event loop
                        await asyncio.to_thread(_fill, run, it)
                elif isinstance(effect, Rewind):
                    if not _reopenable(source, run):
                        raise effect.lost
                    await _close_async(it)
                    it = None
                else:
                    result = await _perform_async(pool, job, effect, write)
            except Exception as exc:
                error = exc
    finally:
        steps.close()
        await _close_async(it)


async def _perform_async(
    pool: AsyncRolePool,
    job: JobContext,
    effect: Effect,
    write: Callable[[AsyncChunk[Any]], Awaitable[None]],
) -> Any:
    if isinstance(effect, Sleep):
        await asyncio.sleep(effect.seconds)
        return None
    if isinstance(effect, Fetch):
        async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(effect.query, effect.params)
            return await cur.fetchone()
    assert isinstance(effect, Transact)
    steps, result = effect.steps, None
    async with pool.connection() as conn, conn.transaction():
        try:
            while True:
                try:
                    step = steps.send(result)
                except StopIteration as stop:
                    return stop.value
                if step == WRITE:
                    chunk = AsyncChunk(**_chunk_fields(effect.chunk, job), conn=conn)
                    try:
                        await write(chunk)
                    except BaseException:
                        await chunk._finish(ok=False)
                        raise
                    await chunk._finish(ok=True)
                    result = None
                else:
                    async with conn.cursor(row_factory=tuple_row) as cur:
                        await cur.execute(step.query, step.params)
                        result = await cur.fetchone()
        finally:
            steps.close()


def _reopenable(source: Any, run: ChunkRun[Any]) -> bool:
    """Can the source be read again from its start (or from a checkpoint)?"""
    if run.seekable:
        return True
    if isinstance(source, AsyncIterable):
        return aiter(source) is not source  # a generator is its own (one-shot) iterator
    return iter(source) is not source


def _close(
    it: Iterator[Any] | AsyncIterator[Any] | None, loop: asyncio.AbstractEventLoop | None
) -> None:
    if loop is not None:
        loop.run_until_complete(_close_async(it))
    elif (close := getattr(it, "close", None)) is not None:
        with contextlib.suppress(ValueError):  # see _close_async
            close()


async def _close_async(it: Iterator[Any] | AsyncIterator[Any] | None) -> None:
    # "already executing/running": a read was interrupted (cancelled) while the source ran;
    # that interruption is the error worth seeing, not this one.
    with contextlib.suppress(ValueError, RuntimeError):
        if (aclose := getattr(it, "aclose", None)) is not None:
            await aclose()
        elif (close := getattr(it, "close", None)) is not None:
            close()


# --- the sync runner -------------------------------------------------------------------------
@overload
def run_chunks_sync(
    source: Source[R],
    write: Callable[[Chunk[R]], None],
    *,
    validate: None = None,
    chunk_size: int | None = None,
    cursor: Callable[[R], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = ...,
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
) -> Progress: ...
@overload
def run_chunks_sync(
    source: Source[R],
    write: Callable[[Chunk[T]], None],
    *,
    validate: Callable[[R], T],
    chunk_size: int | None = None,
    cursor: Callable[[R], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = ...,
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
) -> Progress: ...
def run_chunks_sync(
    source: Any,
    write: Callable[[Chunk[Any]], None],
    *,
    validate: Callable[[Any], Any] | None = None,
    chunk_size: int | None = None,
    cursor: Callable[[Any], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = BadRecords(),
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
) -> Progress:
    """`run_chunks` for sync tasks: `write(chunk)` gets a `Chunk` on a sync connection.

    An async source works too: it is read on a private event loop, one chunk at a time.
    """
    job = current_job()
    if job.db is None:
        raise UnbrokenError("run_chunks_sync() needs a sync task; use run_chunks() in async tasks")
    pool = job.db.pool(CHUNKS_POOL)
    run = _new_run(
        job,
        source,
        total,
        chunk_size=chunk_size,
        cursor=cursor,
        validate=validate,
        bad=bad_records,
        retries=retries,
        name=name,
        flush_each_chunk=flush_each_chunk,
    )
    steps = run.steps()
    it: Iterator[Any] | AsyncIterator[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    result: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = steps.send(result) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            result, error = None, None
            try:
                if isinstance(effect, Read):
                    if it is None:
                        it = _open(source, run)
                    if isinstance(it, AsyncIterator):
                        loop = loop or asyncio.new_event_loop()
                        loop.run_until_complete(_fill_async(run, it))
                    else:
                        _fill(run, it)
                elif isinstance(effect, Rewind):
                    if not _reopenable(source, run):
                        raise effect.lost
                    _close(it, loop)
                    it = None
                else:
                    result = _perform(pool, job, effect, write)
            except Exception as exc:
                error = exc
    finally:
        steps.close()
        _close(it, loop)
        if loop is not None:
            loop.run_until_complete(loop.shutdown_asyncgens())  # the source's own generators
            loop.close()


def _perform(
    pool: RolePool, job: JobContext, effect: Effect, write: Callable[[Chunk[Any]], None]
) -> Any:
    if isinstance(effect, Sleep):
        time.sleep(effect.seconds)
        return None
    if isinstance(effect, Fetch):
        with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(effect.query, effect.params)
            return cur.fetchone()
    assert isinstance(effect, Transact)
    steps, result = effect.steps, None
    with pool.connection() as conn, conn.transaction():
        try:
            while True:
                try:
                    step = steps.send(result)
                except StopIteration as stop:
                    return stop.value
                if step == WRITE:
                    chunk = Chunk(**_chunk_fields(effect.chunk, job), conn=conn)
                    try:
                        write(chunk)
                    except BaseException:
                        chunk._finish(ok=False)
                        raise
                    chunk._finish(ok=True)
                    result = None
                else:
                    with conn.cursor(row_factory=tuple_row) as cur:
                        cur.execute(step.query, step.params)
                        result = cur.fetchone()
        finally:
            steps.close()
