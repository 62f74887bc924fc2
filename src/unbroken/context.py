"""What a running job knows about itself: `unbroken.current_job()`.

The executor sets a `JobContext` in a context variable before it calls the task (for sync
tasks, in the thread that runs them), so task code and helpers such as the chunked runner
can reach the job's id, attempt, checkpoint and the runtime's pools without the task
having to accept an extra argument.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unbroken.errors import JobCancelled, LeaseLost, UnbrokenError

if TYPE_CHECKING:
    from unbroken.db._async.pool import AsyncDatabase
    from unbroken.db._sync.pool import Database
    from unbroken.settings import Settings


@dataclass(slots=True)
class JobContext:
    """The running attempt of one job. Fencing identity: (job_id, attempt, claim, worker_id)."""

    job_id: int
    attempt: int
    max_attempts: int
    worker_id: str
    task: str
    queue: str
    args: dict[str, Any]
    checkpoint: Any  # the last committed checkpoint, None on a first run
    chunk_size: int | None  # per-job override, None when the task's default applies
    rescues: int
    claim: str  # the claim's now() (the row's attempted_at) as text: a later claim never repeats it
    settings: Settings
    schema: str
    adb: AsyncDatabase | None = None  # the worker's async pools (async tasks)
    db: Database | None = None  # the worker's sync pools (sync tasks)
    cancel_requested: bool = False  # set by the heartbeat when someone asks the job to stop
    lease_lost: bool = False  # set by the heartbeat when the job was rescued elsewhere
    task_chunk_size: int | None = None  # the chunk size the task was declared with
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise if the job should stop now: its lease is gone, or it was cancelled."""
        if self.lease_lost:
            raise LeaseLost(f"job {self.job_id} attempt {self.attempt}: lease lost")
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was cancelled")


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("unbroken_job")


def current_job() -> JobContext:
    """The job this code runs in; raises outside a job."""
    try:
        return _current.get()
    except LookupError:
        raise UnbrokenError("current_job() called outside a running unbroken job") from None


def set_current_job(ctx: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(ctx)


def reset_current_job(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
