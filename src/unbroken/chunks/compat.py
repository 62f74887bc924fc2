"""The parts of the chunk runner written by hand, once per form: where async and sync differ
by more than `await`.

`_async/runner.py` is the source; `_sync/runner.py` is generated from it by
`scripts/gen_sync.py`, which drops `async`/`await` and renames (`arun_chunks` ->
`run_chunks`, `AsyncChunk` -> `Chunk`, `AsyncSourceReader` -> `SourceReader`, `ajob_pool`
-> `job_pool`, `AsyncWrite` -> `Write`). What cannot be generated lives here:

- Reading the source. The async runner reads an async iterable on its own loop, an
  in-memory sequence in place, and any other (blocking) iterator in a worker thread
  (`asyncio.to_thread`), so that a slow HTTP read does not stall every job on the loop.
  The sync runner reads an iterator in place, and an async iterable on a private event loop
  of its own, one chunk at a time. Neither is the other without `await`, so they are two
  small classes on one base: `AsyncSourceReader` and `SourceReader`.
- Finding the job's pool: `job_pool` refuses to run on a thread that runs an event loop
  (a sync run there would block the loop) and says to `await arun_chunks(...)`.
- What needs both `Iterable` and `AsyncIterable` (telling a seekable source apart, opening
  it): the generator rewrites `AsyncIterable` to `Iterable`.
- The types of a source (iterable or async iterable) and of the write function (awaited in
  one form, not in the other).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from unbroken.chunks.state import ChunkRun, Page
from unbroken.context import JobContext, current_job
from unbroken.errors import CommitsLost, UnbrokenError

if TYPE_CHECKING:
    from unbroken.chunks._async.runner import AsyncChunk
    from unbroken.chunks._sync.runner import Chunk
    from unbroken.db._async.pool import AsyncRolePool
    from unbroken.db._sync.pool import RolePool

CHUNKS_POOL = "chunks"  # the pool role chunks commit through; workers open it at start
R = TypeVar("R")
T = TypeVar("T")

# Items or pages; or a function of the last checkpoint (None at first) returning them.
Yields: TypeAlias = Iterable[R | Page[R]] | AsyncIterable[R | Page[R]]
Source: TypeAlias = Yields[R] | Callable[[Any], Yields[R]]

AsyncWrite: TypeAlias = "Callable[[AsyncChunk[T]], Awaitable[None]]"
Write: TypeAlias = "Callable[[Chunk[T]], None]"
# Called with each chunk's checkpoint once it is committed (awaited in the async form).
AsyncOnCommit: TypeAlias = Callable[[Any], Awaitable[None]]
OnCommit: TypeAlias = Callable[[Any], None]


# --- the job and its pool ----------------------------------------------------------------------
def ajob_pool() -> tuple[JobContext, AsyncRolePool]:
    """The current job and its "chunks" pool, for `arun_chunks`."""
    job = current_job()
    if job.adb is None:
        raise UnbrokenError("arun_chunks() needs an async task; use run_chunks() in sync tasks")
    return job, job.adb.pool(CHUNKS_POOL)


def job_pool() -> tuple[JobContext, RolePool]:
    """The current job and its "chunks" pool, for `run_chunks`; never on an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UnbrokenError(
            "run_chunks() was called on a thread that runs an event loop, which it would "
            "block: use `await arun_chunks(...)` there"
        )
    job = current_job()
    if job.db is None:
        raise UnbrokenError(
            "run_chunks() needs a sync task; use `await arun_chunks(...)` in async tasks"
        )
    return job, job.db.pool(CHUNKS_POOL)


def new_run(job: JobContext, source: Any, total: int | None, **options: Any) -> ChunkRun[Any]:
    """The run's state machine; `total` defaults to `len(source)` for a sized source."""
    seekable = callable(source) and not isinstance(source, Iterable | AsyncIterable)
    if total is None and not seekable and isinstance(source, Sized):
        total = len(source)
    return ChunkRun(job, seekable, total=total, **options)


# --- reading the source ------------------------------------------------------------------------
class _Reader:
    """One run's source, opened at its first read and again after a rewind."""

    def __init__(self, source: Any, run: ChunkRun[Any]) -> None:
        self.source = source
        self.run = run
        self.it: Iterator[Any] | AsyncIterator[Any] | None = None

    def _opened(self) -> Iterator[Any] | AsyncIterator[Any]:
        if self.it is None:
            opened = self.source(self.run.seek) if self.run.seekable else self.source
            if isinstance(opened, AsyncIterable):
                self.it = aiter(opened)
            elif isinstance(opened, Iterable):
                self.it = iter(opened)
            else:
                raise TypeError(
                    f"a chunk source must be iterable or async iterable, not {type(opened)}"
                )
        return self.it

    def _check_reopenable(self, lost: CommitsLost) -> None:
        """Raise `lost` unless the source can be read again from its start (or checkpoint)."""
        if self.run.seekable:
            return
        source = self.source
        if isinstance(source, AsyncIterable):
            again = aiter(source) is not source  # a generator is its own (one-shot) iterator
        else:
            again = iter(source) is not source
        if not again:
            raise lost


class AsyncSourceReader(_Reader):
    """Reads for `arun_chunks`: never blocks the event loop."""

    async def fill(self) -> None:
        """Read until the chunk is full or the source ends."""
        it = self._opened()
        if isinstance(it, AsyncIterator):
            await _afill(self.run, it)
        elif isinstance(self.source, Sequence):
            _fill(self.run, it)  # in memory: nothing to wait for
        else:  # a blocking iterator must not stall the event loop
            await asyncio.to_thread(_fill, self.run, it)

    async def rewind(self, lost: CommitsLost) -> None:
        """Close the source so the next read opens it again; raise `lost` if it cannot be."""
        self._check_reopenable(lost)
        await self.close()

    async def close(self) -> None:
        it, self.it = self.it, None
        await _aclose(it)


class SourceReader(_Reader):
    """Reads for `run_chunks`: an async source on a private event loop, one chunk at a time."""

    def __init__(self, source: Any, run: ChunkRun[Any]) -> None:
        super().__init__(source, run)
        self.loop: asyncio.AbstractEventLoop | None = None

    def fill(self) -> None:
        """Read until the chunk is full or the source ends."""
        it = self._opened()
        if isinstance(it, AsyncIterator):
            self.loop = self.loop or asyncio.new_event_loop()
            self.loop.run_until_complete(_afill(self.run, it))
        else:
            _fill(self.run, it)

    def rewind(self, lost: CommitsLost) -> None:
        """Close the source so the next read opens it again; raise `lost` if it cannot be."""
        self._check_reopenable(lost)
        self._close_it()

    def close(self) -> None:
        self._close_it()
        if (loop := self.loop) is not None:
            self.loop = None
            loop.run_until_complete(loop.shutdown_asyncgens())  # the source's own generators
            loop.close()

    def _close_it(self) -> None:
        it, self.it = self.it, None
        if self.loop is not None:
            self.loop.run_until_complete(_aclose(it))
        elif (close := getattr(it, "close", None)) is not None:
            with contextlib.suppress(ValueError):  # see _aclose
                close()


def _fill(run: ChunkRun[Any], it: Iterator[Any]) -> None:
    """Read from a sync iterator until the chunk is full or the source ends."""
    while (want := run.want()) > 0:
        got = list(islice(it, want))
        run.add(got)
        if len(got) < want:
            run.exhausted()


async def _afill(run: ChunkRun[Any], it: AsyncIterator[Any]) -> None:
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


async def _aclose(it: Iterator[Any] | AsyncIterator[Any] | None) -> None:
    # "already executing/running": a read was interrupted (cancelled) while the source ran;
    # that interruption is the error worth seeing, not this one.
    with contextlib.suppress(ValueError, RuntimeError):
        if (aclose := getattr(it, "aclose", None)) is not None:
            await aclose()
        elif (close := getattr(it, "close", None)) is not None:
            close()
