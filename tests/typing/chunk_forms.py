# Checked by tests/unit/test_typing.py: mypy must flag exactly the lines marked "error".
# The sync runner takes a plain write function and returns a Progress; the async one takes
# an async write function and must be awaited.
from __future__ import annotations

import unbroken
from unbroken import AsyncChunk, Chunk, Progress


def write(chunk: Chunk[int]) -> None:
    chunk.copy("t", ["n"], [(n,) for n in chunk.items])


async def awrite(chunk: AsyncChunk[int]) -> None:
    await chunk.copy("t", ["n"], [(n,) for n in chunk.items])


def sync_task() -> None:
    done: Progress = unbroken.run_chunks(range(10), write)
    unbroken.run_chunks([1, 2], write, validate=int)
    unbroken.run_chunks(range(10), awrite)  # error
    print(done)


async def async_task() -> None:
    done: Progress = await unbroken.arun_chunks(range(10), awrite)
    await unbroken.arun_chunks(["1"], awrite, validate=int)
    await unbroken.arun_chunks(range(10), write)  # error
    await unbroken.run_chunks(range(10), write)  # error
    print(done)
