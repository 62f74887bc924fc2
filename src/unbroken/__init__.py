"""unbroken: a PostgreSQL-backed job and pipeline runtime that survives its database.

This module is the public API: the names in `__all__` (sorted; tests/unit/test_public_api.py
keeps the list sorted, importable, complete, and covering every name the README's code
uses). Every other module of the package is internal and may change without notice; the
README names the only two reached by their module path (`unbroken.dashboard.app.create_app`
and `unbroken.logs.JsonFormatter`, to embed the dashboard and the log format).

Naming: where a sync and an async form exist, the sync one has the plain name and the async
one `a` + name (`run_chunks` / `arun_chunks`, `read_progress` / `aread_progress`, and the
methods `enqueue` / `aenqueue`); a class that exists only for async code is `Async` + name
(`AsyncChunk`, beside `Chunk`).
"""

from unbroken.app import App, Task
from unbroken.chunks import (
    AsyncChunk,
    BadRecords,
    Chunk,
    Page,
    Progress,
    aread_progress,
    arun_chunks,
    read_progress,
    run_chunks,
)
from unbroken.context import JobContext, Upstream, current_job
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
from unbroken.workflow import Step, Workflow

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
    "Step",
    "Task",
    "UnbrokenError",
    "UnitOfWorkFailed",
    "Upstream",
    "Worker",
    "Workflow",
    "__version__",
    "aread_progress",
    "arun_chunks",
    "current_job",
    "load_settings",
    "read_progress",
    "run_chunks",
]
