"""unbroken: a PostgreSQL-backed job and pipeline runtime that survives its database."""

from unbroken.app import App, Task
from unbroken.chunks import AsyncChunk, BadRecords, Chunk, Page, run_chunks, run_chunks_sync
from unbroken.chunks.progress import Progress, read_progress
from unbroken.context import JobContext, current_job
from unbroken.db.backoff import BackoffPolicy
from unbroken.enqueue import JobSpec
from unbroken.errors import (
    BadRecordsExceeded,
    CommitsLost,
    ConfigError,
    DatabaseUnavailable,
    EnqueueError,
    JobCancelled,
    LeaseLost,
    Permanent,
    Snooze,
    UnbrokenError,
    UnitOfWorkFailed,
)
from unbroken.runtime.worker import Worker
from unbroken.settings import Settings, load_settings

Retry = BackoffPolicy  # reads well at the call site: @app.task(retry=unbroken.Retry(base=5))

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncChunk",
    "BackoffPolicy",
    "BadRecords",
    "BadRecordsExceeded",
    "Chunk",
    "CommitsLost",
    "ConfigError",
    "DatabaseUnavailable",
    "EnqueueError",
    "JobCancelled",
    "JobContext",
    "JobSpec",
    "LeaseLost",
    "Page",
    "Permanent",
    "Progress",
    "Retry",
    "Settings",
    "Snooze",
    "Task",
    "UnbrokenError",
    "UnitOfWorkFailed",
    "Worker",
    "__version__",
    "current_job",
    "load_settings",
    "read_progress",
    "run_chunks",
    "run_chunks_sync",
]
