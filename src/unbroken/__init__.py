"""unbroken: a PostgreSQL-backed job and pipeline runtime that survives its database."""

from unbroken.app import App, JobSpec, Task
from unbroken.context import JobContext, current_job
from unbroken.db.backoff import BackoffPolicy
from unbroken.errors import (
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
from unbroken.settings import Settings, load_settings
from unbroken.worker import Worker

Retry = BackoffPolicy  # reads well at the call site: @app.task(retry=unbroken.Retry(base=5))

__version__ = "0.1.0"

__all__ = [
    "App",
    "BackoffPolicy",
    "ConfigError",
    "DatabaseUnavailable",
    "EnqueueError",
    "JobCancelled",
    "JobContext",
    "JobSpec",
    "LeaseLost",
    "Permanent",
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
]
