"""What a running job knows about itself: `unbroken.current_job()`.

The executor sets a `JobContext` in a context variable before it calls the task (for sync
tasks, in the thread that runs them), so task code and helpers such as the chunked runner
can reach the job's id, attempt, checkpoint, a workflow step's upstream results and the
runtime's pools without the task having to accept an extra argument.

Two things a task does through it:
- `ctx.progress(done=, total=, message=)` only records the report in memory; the lease
  keeper sends the latest one with its next heartbeat (and the completer with the outcome),
  in the statement it runs anyway, under the same fence: a report costs no round trip, and
  one from a stale claim changes nothing.
- `with ctx.transaction() as conn` (`async with ctx.atransaction()` in async tasks) checks
  out a connection of the worker's "tasks" pool, its own bounded pool apart from the
  runtime's, so task code can never take the connections heartbeats and outcomes need.
  The transaction commits when the block ends and rolls back on an exception; the
  connection goes back clean. No connection is held between two blocks.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unbroken.errors import JobCancelled, LeaseLost, UnbrokenError

if TYPE_CHECKING:
    from psycopg import AsyncConnection, Connection

    from unbroken.db._async.pool import AsyncDatabase
    from unbroken.db._sync.pool import Database
    from unbroken.settings import Settings


TASKS_POOL = "tasks"  # the worker's pool for task code's transactions
MESSAGE_MAX = 500  # characters of a progress message kept
COUNT_MAX = 2**63 - 1  # a count the database reads as bigint


def storable_text(text: str) -> str:
    """`text` as PostgreSQL can store it: NULs dropped, a lone surrogate (a file name read
    with surrogateescape) written as its escape, `\\udce9`, instead of failing the write."""
    return text.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """A progress report: `done` of `total` units (either may be unknown) and a message.

    Stored in `jobs.progress` as `processed`, `total` and `message`, the keys `unbroken
    jobs watch` and the dashboard read for any job."""

    done: int | None = None
    total: int | None = None
    message: str | None = None

    @classmethod
    def from_json(cls, progress: Any) -> TaskProgress | None:
        """From a `jobs.progress` value; None when it holds no report."""
        if not isinstance(progress, dict):
            return None
        done, total, message = (progress.get(k) for k in ("processed", "total", "message"))
        if done is None and total is None and message is None:
            return None
        return cls(
            done=done if isinstance(done, int) else None,
            total=total if isinstance(total, int) else None,
            message=message if isinstance(message, str) else None,
        )


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream job of a workflow's step, as it ended: `succeeded` with its `result`
    (its return value, decoded JSON), or `dead` or `cancelled` (result None) for a step
    declared `run_anyway`; `pruned` (task and result None) when the job was deleted before
    this step ran again (a step retried long after)."""

    job_id: int
    task: str | None
    state: str
    result: Any


def parse_upstream(text: str | None) -> list[Upstream]:
    """The claim's `upstream` column (a JSON array, in declared order) as `Upstream`s."""
    if not text:
        return []
    return [
        Upstream(int(u["id"]), u.get("task"), str(u["state"]), u.get("result"))
        for u in json.loads(text)
    ]


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
    last_progress: TaskProgress | None = None  # as the previous attempts left it
    workflow_id: int | None = None  # its workflow (unbroken.workflow), None for a lone job
    upstream: list[Upstream] = field(default_factory=list)  # a step's upstream jobs, in order
    extra: dict[str, Any] = field(default_factory=dict)
    # This attempt's reports: (version, keys) replaced whole, so a reader in another thread
    # sees one report or the next, never half of one; `_sent` is the version last written.
    _reported: tuple[int, dict[str, Any]] = (0, {})
    _sent: int = 0

    def upstream_results(self) -> list[Any]:
        """The return values of this workflow step's upstream jobs, in the order its
        dependencies were declared (None for one that ended dead or cancelled, when the
        step runs anyway, and for one pruned before the step was retried); read when the
        job was claimed, no query."""
        return [u.result for u in self.upstream]

    def check(self) -> None:
        """Raise if the job should stop now: its lease is gone, or it was cancelled."""
        if self.lease_lost:
            raise LeaseLost(f"job {self.job_id} attempt {self.attempt}: lease lost")
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    # --- progress ----------------------------------------------------------------------------
    def progress(
        self, done: int | None = None, total: int | None = None, message: str | None = None
    ) -> None:
        """Report how far the job got; what is left out keeps its last value.

        Costs no database round trip: the latest report goes out with the next heartbeat
        (every `heartbeat_interval`) or with the job's outcome, whichever comes first."""
        for name, value in (("done", done), ("total", total)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"progress {name}={value!r}: must be a whole number >= 0")
            if value is not None and value > COUNT_MAX:
                raise ValueError(f"progress {name}={value}: must be at most {COUNT_MAX}")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"progress message={message!r}: must be a string")
        version, keys = self._reported
        update = {
            "processed": done,
            "total": total,
            "message": None if message is None else storable_text(message[:MESSAGE_MAX]),
        }
        merged = {**keys, **{k: v for k, v in update.items() if v is not None}}
        if (
            merged.get("processed") is not None
            and merged.get("total") is not None
            and merged["processed"] > merged["total"]
        ):
            raise ValueError(
                f"progress done={merged['processed']} is more than total={merged['total']}"
            )
        self._reported = (version + 1, merged)

    def progress_unsent(self) -> tuple[int, str] | None:
        """(version, JSON) of the latest report not yet written; None if there is none."""
        version, keys = self._reported
        if version <= self._sent:
            return None
        return version, json.dumps(keys)

    def progress_sent(self, version: int) -> None:
        self._sent = max(self._sent, version)

    # --- transactions ------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection[Any]]:
        """A connection of the "tasks" pool in a transaction (sync tasks): committed when
        the block ends, rolled back if it raises; not held after the block."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise UnbrokenError(
                "ctx.transaction() would block the event loop: in an async task use "
                "`async with ctx.atransaction() as conn`"
            )
        if self.db is None:
            raise UnbrokenError("this job runs without the worker's sync pools")
        self.check()
        with self.db.pool(TASKS_POOL).transaction() as conn:
            yield conn

    @asynccontextmanager
    async def atransaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        """`transaction()` for async tasks."""
        if self.adb is None:
            raise UnbrokenError("this job runs without the worker's async pools")
        self.check()
        async with self.adb.pool(TASKS_POOL).transaction() as conn:
            yield conn


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
