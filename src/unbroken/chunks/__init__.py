"""Chunked runs: the runner, its state machine, the sinks and the progress."""

from unbroken.chunks.runner import (
    CHUNKS_POOL,
    AsyncChunk,
    BadRecords,
    BadRecordsExceeded,
    Chunk,
    CommitsLost,
    Page,
    run_chunks,
    run_chunks_sync,
)

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
