"""The chunk runner and its chunk: async source of the generated sync form.

`src/unbroken/chunks/_sync/runner.py` is generated from this file by `scripts/gen_sync.py`
(a test fails if it is stale): `arun_chunks` becomes `run_chunks`, `AsyncChunk` `Chunk`.
The algorithm is not here but in `unbroken.chunks.state`, shared: this runner only performs
its effects. What the sync form cannot get by dropping `await` (reading the source, finding
the pool) is written by hand in `unbroken.chunks.compat`. `unbroken.chunks` says what the
runner guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from unbroken.chunks._async.sinks import acopy_rows, aorm_session, aupsert_rows
from unbroken.chunks.compat import (
    AsyncOnCommit,
    AsyncSourceReader,
    AsyncWrite,
    Source,
    ajob_pool,
    new_run,
)
from unbroken.chunks.progress import Progress
from unbroken.chunks.sinks import Rows
from unbroken.chunks.state import (
    WRITE,
    BadRecords,
    Committed,
    Effect,
    Fetch,
    PendingChunk,
    Read,
    Rewind,
    Sleep,
    Transact,
)
from unbroken.context import JobContext
from unbroken.db.compat import asleep

if TYPE_CHECKING:
    from unbroken.chunks.sinks import AsyncSession, SAAsyncConnection
    from unbroken.db._async.pool import AsyncRolePool

R = TypeVar("R")
T = TypeVar("T")


@dataclass(eq=False)
class AsyncChunk(Generic[T]):
    """One chunk inside its transaction. Write through `conn` or the helpers; the runtime
    commits the writes with the checkpoint (never commit or roll back `conn` yourself).

    A write function may run more than once for the same chunk (after a lost connection),
    always in a fresh transaction: it must write only through this connection.
    """

    items: list[T] = field(repr=False)  # this chunk's (valid) items
    number: int  # 1-based, in this run
    position: int  # items of the source consumed before this chunk
    checkpoint: Any  # the checkpoint this chunk commits
    job: JobContext = field(repr=False)
    conn: AsyncConnection[Any] = field(kw_only=True, repr=False)
    _orm: tuple[AsyncSession, SAAsyncConnection] | None = field(default=None, kw_only=True)

    async def copy(self, table: str, columns: Sequence[str], rows: Rows) -> int:
        """COPY `rows` into `table` (the fastest way in); returns how many were sent."""
        return await acopy_rows(self.conn, table, columns, rows)

    async def upsert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Rows,
        *,
        key: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> int:
        """Insert, or update `update` (default: all non-key columns) where `key` exists."""
        return await aupsert_rows(self.conn, table, columns, rows, key=key, update=update)

    async def session(self) -> AsyncSession:
        """A SQLAlchemy session on this chunk's transaction (expire_on_commit=False); an
        `AsyncSession` from an `AsyncChunk`, to be awaited."""
        if self._orm is None:
            self._orm = await aorm_session(self.conn)
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


@overload
async def arun_chunks(
    source: Source[R],
    write: AsyncWrite[R],
    *,
    validate: None = None,
    chunk_size: int | None = None,
    cursor: Callable[[R], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = ...,
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
    on_commit: AsyncOnCommit | None = None,
) -> Progress: ...
@overload
async def arun_chunks(
    source: Source[R],
    write: AsyncWrite[T],
    *,
    validate: Callable[[R], T],
    chunk_size: int | None = None,
    cursor: Callable[[R], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = ...,
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
    on_commit: AsyncOnCommit | None = None,
) -> Progress: ...
async def arun_chunks(
    source: Any,
    write: AsyncWrite[Any],
    *,
    validate: Callable[[Any], Any] | None = None,
    chunk_size: int | None = None,
    cursor: Callable[[Any], Any] | None = None,
    total: int | None = None,
    bad_records: BadRecords = BadRecords(),
    retries: int = 10,
    name: str = "main",
    flush_each_chunk: bool = False,
    on_commit: AsyncOnCommit | None = None,
) -> Progress:
    """Process `source` in chunks inside the current job; returns the final progress.

    `arun_chunks` runs in async tasks and awaits `write`, which gets an `AsyncChunk`;
    `run_chunks` runs in sync tasks and calls `write` with a `Chunk`. Either reads both
    kinds of source: `arun_chunks` reads a blocking iterator in a thread, `run_chunks` an
    async one on a private event loop, one chunk at a time.

    source: items or `Page`s (iterable or async iterable), or a function of the last
        checkpoint returning them: such a source seeks on resume instead of being skipped.
        Called with None, it must start from the beginning.
    write: writes one chunk through `chunk.conn`, `chunk.copy`, `chunk.upsert` or
        `chunk.session()`; it may run again for the same chunk.
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
    on_commit: called (awaited in `arun_chunks`) with each chunk's checkpoint right after
        that chunk committed, before the next read: for what may only follow a commit
        (acknowledging a source, as CDC advances its replication slot). It is not called
        again for a chunk committed by an earlier attempt; an error from it ends the run
        (the chunk stays committed).
    """
    job, pool = ajob_pool()
    run = new_run(
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
    reader = AsyncSourceReader(source, run)
    steps = run.steps()
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
                    await reader.fill()
                elif isinstance(effect, Rewind):
                    await reader.rewind(effect.lost)
                elif isinstance(effect, Committed):
                    if on_commit is not None:
                        await on_commit(effect.checkpoint)
                else:
                    result = await _perform(pool, job, effect, write)
            except Exception as exc:
                error = exc
    finally:
        steps.close()
        await reader.close()


async def _perform(
    pool: AsyncRolePool, job: JobContext, effect: Effect, write: AsyncWrite[Any]
) -> Any:
    if isinstance(effect, Sleep):
        await asleep(effect.seconds)
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


def _chunk_fields(pending: PendingChunk[Any], job: JobContext) -> dict[str, Any]:
    return {
        "items": pending.items,
        "number": pending.number,
        "position": pending.base,
        "checkpoint": pending.checkpoint,
        "job": job,
    }
