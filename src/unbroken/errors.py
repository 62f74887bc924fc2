"""Every exception unbroken raises on purpose.

UnbrokenError
├── ConfigError            a setting or URL is wrong (CLI exit code 2)
├── DatabaseUnavailable    the server stayed unreachable for the whole start-up wait (a
│                          command's single try), or the embedded one is stopped
├── EmbeddedServerError    the embedded PostgreSQL could not be set up or started
├── MigrationError         the schema could not be brought up to date
├── StatementDeadline      a statement outlived its application-level deadline
├── UnitOfWorkFailed       a unit of work kept failing on transient errors
├── EnqueueError           a job was refused at enqueue (nothing written)
├── TaskNotFound           a job names a task this app does not know
├── LeaseLost              this worker no longer owns the job (it was rescued)
├── JobCancelled           a running job was asked to stop
└── PositionLost           a CDC pipeline's stored position cannot be resumed (slot gone,
                           other server, WAL removed) and it was told to fail (on_gap="fail")

Permanent / Snooze are raised by task code, not by unbroken, and so do not inherit
from UnbrokenError: they are signals to the executor, not failures of the runtime.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


class UnbrokenError(Exception):
    """Base class of every error unbroken raises."""


class ConfigError(UnbrokenError):
    """A setting, URL or option is wrong; the message names it."""


class DatabaseUnavailable(UnbrokenError):
    """The database stayed unreachable for the whole configured wait (an interactive
    command tries once), or the embedded server is stopped and may not be started."""


class EmbeddedServerError(UnbrokenError):
    """The embedded PostgreSQL could not be initialised or started."""


class MigrationError(UnbrokenError):
    """The schema could not be migrated."""


class StatementDeadline(UnbrokenError):
    """A statement did not finish within its application-level deadline.

    Raised when the network silently drops everything (a half-open connection): the server
    never answers, so only a client-side deadline can end the wait.
    """


class UnitOfWorkFailed(UnbrokenError):
    """A unit of work failed on transient errors more times than allowed."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class EnqueueError(UnbrokenError):
    """A job was refused at enqueue; nothing was written."""


class TaskNotFound(UnbrokenError):
    """A job names a task that is not registered on this app."""


class LeaseLost(UnbrokenError):
    """This worker no longer holds the job's lease for this attempt: it must stop."""


class JobCancelled(UnbrokenError):
    """The job was cancelled while it ran."""


class Permanent(Exception):  # reads as `raise Permanent(...)` in task code
    """Raise from a task to fail the job at once, without retrying."""


class Snooze(Exception):  # reads as `raise Snooze(30)` in task code
    """Raise from a task to run it again later without counting a failed attempt."""

    def __init__(self, delay: float | timedelta) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError(f"Snooze delay must be >= 0 seconds, got {seconds}")
        super().__init__(f"snoozed for {seconds:g} s")
        self.seconds = seconds


class CommitsLost(UnbrokenError):
    """The database no longer has chunk commits it acknowledged (a crash while chunks commit
    without waiting for their flush, or a failover to a replica that lagged). Each vanished
    with its checkpoint, so redoing them from the surviving checkpoint is exact. Raised only
    when the source cannot be read again: an iterator that is not a function of the
    checkpoint, nor a collection. The next attempt resumes."""


class BadRecordsExceeded(UnbrokenError, Permanent):
    """More items failed validation than allowed. Permanent: a retry would read the same."""

    def __init__(self, message: str, failed: int, seen: int, errors: list[dict[str, Any]]):
        super().__init__(message)
        self.failed = failed
        self.seen = seen
        self.errors = errors


class PositionLost(UnbrokenError, Permanent):
    """A CDC pipeline cannot resume where its sink stands: its replication slot is gone or
    lost its WAL, it is another server or database, or the slot moved past the stored
    position. Raised instead of re-snapshotting when the pipeline says `on_gap="fail"`;
    permanent (a retry would find the same)."""
