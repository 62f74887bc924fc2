"""The rows the operator store returns: frozen dataclasses, built by psycopg from named columns.

The store reads each query with `class_row(Row)` (columns become fields by name), or with
`kwargs_row(Row.from_row)` where a field is derived from a column (a JSON list of errors,
a progress object, percentiles); no positional tuple crosses the database boundary. A
field's order is the order of the row's `--json` and API output.

A `state` column arrives as text and is kept as a `JobState`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from unbroken.ops.counts import Count
from unbroken.states import FINAL, JobState


class _HasState:
    """A row with a `state` column: read as text, kept as a JobState."""

    state: JobState

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", JobState(self.state))


# --- jobs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSummary(_HasState):
    id: int
    queue: str
    task: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    args: Any
    run_at: datetime
    created_at: datetime
    attempted_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    progress: Any
    last_error_type: str | None
    last_error: str | None


@dataclass(frozen=True)
class AttemptError:
    """One entry of jobs.errors: what went wrong in one attempt."""

    attempt: int | None
    at: str | None
    worker: str | None
    type: str | None
    message: str | None
    traceback: str | None
    kind: str | None

    @classmethod
    def from_json(cls, entry: Any) -> AttemptError:
        e = entry if isinstance(entry, dict) else {"message": str(entry)}
        attempt = e.get("attempt")
        return cls(
            attempt=attempt if isinstance(attempt, int) else None,
            at=_str_or_none(e.get("at")),
            worker=_str_or_none(e.get("worker")),
            type=_str_or_none(e.get("type")),
            message=_str_or_none(e.get("message")),
            traceback=_str_or_none(e.get("traceback")),
            kind=_str_or_none(e.get("kind")),
        )


@dataclass(frozen=True)
class ProgressView:
    """A job's progress as its task wrote it; every key is optional.

    Reads the chunk runner's keys (position, processed, failed, total, rate, eta_seconds,
    checkpoint_at, chunks, done, errors; see unbroken.chunks.progress), those of
    `current_job().progress()` (processed, total, message, reported_at) and the short forms a
    task may write itself (eta_s). Unknown keys are kept in `extra` and shown as they are.
    """

    total: float | None
    processed: float | None
    failed: float | None
    rate: float | None  # items per second
    eta_s: float | None
    checkpoint_at: str | None
    checkpoint_age_s: float | None
    fraction: float | None  # consumed / total, 0..1, when both are known
    done: bool = False
    message: str | None = None  # the task's own words (current_job().progress(message=))
    extra: dict[str, Any] = field(default_factory=dict)

    KNOWN = frozenset(
        {
            "total",
            "processed",
            "failed",
            "rate",
            "eta_s",
            "eta_seconds",
            "checkpoint_at",
            "position",
            "done",
            "message",
            "reported_at",
        }
    )

    @classmethod
    def from_json(cls, progress: Any, now: datetime | None = None) -> ProgressView | None:
        if not isinstance(progress, dict):
            return None
        total, processed = _num(progress.get("total")), _num(progress.get("processed"))
        failed = _num(progress.get("failed"))
        # position counts failed items too: it is how far through the source the job is.
        consumed = _num(progress.get("position"))
        if consumed is None and processed is not None:
            consumed = processed + (failed or 0)
        fraction = None
        if total and consumed is not None and total > 0:
            fraction = max(0.0, min(1.0, consumed / total))
        done = progress.get("done") is True
        if done:
            fraction = 1.0
        checkpoint_at = _str_or_none(progress.get("checkpoint_at"))
        age = None
        if checkpoint_at and now is not None:
            try:
                age = max(0.0, (now - datetime.fromisoformat(checkpoint_at)).total_seconds())
            except (ValueError, TypeError):
                age = None
        eta = _num(progress.get("eta_s"))
        return cls(
            total=total,
            processed=processed,
            failed=failed,
            rate=_num(progress.get("rate")),
            eta_s=eta if eta is not None else _num(progress.get("eta_seconds")),
            checkpoint_at=checkpoint_at,
            checkpoint_age_s=age,
            fraction=fraction,
            done=done,
            message=_str_or_none(progress.get("message")),
            extra={k: v for k, v in progress.items() if k not in cls.KNOWN},
        )


@dataclass(frozen=True)
class JobDetail(_HasState):
    id: int
    queue: str
    task: str
    args: Any
    state: JobState
    priority: int
    run_at: datetime
    attempt: int
    max_attempts: int
    unique_key: str | None
    worker_id: str | None
    lease_expires_at: datetime | None
    rescues: int
    cancel_requested: bool
    errors: list[AttemptError]
    checkpoint: Any
    progress: Any
    chunk_size: int | None
    result: Any
    created_at: datetime
    attempted_at: datetime | None
    finished_at: datetime | None
    now: datetime  # the database's clock when read, so ages agree with the rows
    limit_key: str | None = None  # flow control (unbroken.limits)

    @classmethod
    def from_row(cls, *, errors: Any, now: datetime, **columns: Any) -> JobDetail:
        """From job_get's columns; `errors` is the jsonb list of attempts."""
        entries = errors or []
        if not isinstance(entries, list):  # an Undecodable: one entry that says so
            entries = [entries]
        return cls(**columns, errors=[AttemptError.from_json(e) for e in entries], now=now)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def progress_view(self) -> ProgressView | None:
        return ProgressView.from_json(self.progress, self.now)


@dataclass(frozen=True)
class JobStateChange(_HasState):
    """A job an action changed, and the state it is in after (job_cancel_many)."""

    id: int
    state: JobState


@dataclass(frozen=True)
class BulkResult:
    matched: int  # jobs the filter selected
    changed: int  # jobs the guarded write actually changed
    ids: list[int]  # the changed ones (first 1000)


# --- queues ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StateCount(_HasState):
    queue: str
    state: JobState
    jobs: int
    exact: bool = True  # False: estimated from a sample of the table


@dataclass(frozen=True)
class PriorityBacklog:
    priority: int
    available: int
    oldest_wait_s: float | None


@dataclass(frozen=True)
class QueueInfo:
    name: str
    paused: bool
    available: int
    scheduled: int
    retryable: int
    running: int
    dead: int  # a Count: "~" when estimated from a sample (unbroken.ops.counts)
    oldest_wait_s: float | None
    priorities: list[PriorityBacklog] = field(default_factory=list)

    @classmethod
    def from_row(cls, *, priorities: Any, dead: int, dead_exact: bool, **columns: Any) -> QueueInfo:
        """From queue_list's columns; `priorities` is a JSON list of backlog objects."""
        backlog = [
            PriorityBacklog(int(p["priority"]), int(p["available"]), _num(p["oldest_wait_s"]))
            for p in (priorities if isinstance(priorities, list) else [])
        ]
        counted = Count(dead, "exact" if dead_exact else "about")
        return cls(**columns, dead=counted, priorities=backlog)


# --- dead letters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadGroup:
    key: str
    queue: str
    task: str
    error_type: str
    message: str
    jobs: int
    first_at: datetime
    last_at: datetime
    sample_ids: list[int]


# --- statistics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskStats:
    queue: str
    task: str
    succeeded: int
    failed: int  # failed attempts, dead ones included
    dead: int
    per_minute: float  # finished attempts per minute over the window
    failure_rate: float | None  # failed / (succeeded + failed)
    # Run times (seconds) of the `timed` jobs that succeeded in the window and are still in
    # the table, their last attempt each: mean, min, max and percentiles of the same rows.
    timed: int
    avg_s: float | None
    min_s: float | None
    max_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None

    @classmethod
    def from_row(
        cls,
        *,
        minutes: float,
        queue: str,
        task: str,
        succeeded: int,
        failed: int,
        dead: int,
        timed: int,
        avg_s: float | None,
        min_s: float | None,
        max_s: float | None,
        percentiles: list[float] | None,
    ) -> TaskStats:
        """From stats_by_task's columns over a window of `minutes`."""
        done = succeeded + failed
        p50, p95, p99 = percentiles or (None, None, None)
        return cls(
            queue=queue,
            task=task,
            succeeded=succeeded,
            failed=failed,
            dead=dead,
            per_minute=done / minutes,
            failure_rate=failed / done if done else None,
            timed=timed,
            avg_s=avg_s,
            min_s=min_s,
            max_s=max_s,
            p50_s=p50,
            p95_s=p95,
            p99_s=p99,
        )


@dataclass(frozen=True)
class SeriesPoint:
    at: datetime
    succeeded: int
    failed: int
    dead: int
    runtime_ms: int

    @property
    def failure_rate(self) -> float | None:
        done = self.succeeded + self.failed
        return self.failed / done if done else None


# --- the runtime -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunningJob:
    """What every view of running jobs shows first."""

    id: int
    queue: str
    task: str
    attempt: int
    max_attempts: int
    worker_id: str | None
    attempted_at: datetime | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class StuckJob(RunningJob):
    progress: Any
    running_s: float | None
    lease_overdue_s: float | None  # > 0: the lease ran out this long ago
    heartbeat_age_s: float | None  # None: the worker is not registered (any more)
    reason: str  # lease_expired | long_running


@dataclass(frozen=True)
class LongJob(RunningJob):
    progress: ProgressView | None
    has_checkpoint: bool
    rescues: int
    running_s: float | None

    @classmethod
    def from_row(cls, *, progress: Any, now: datetime, **columns: Any) -> LongJob:
        """From job_list_progress's columns; `now` is the database's clock."""
        return cls(**columns, progress=ProgressView.from_json(progress, now))


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    job_ids: list[int]
    silent: bool  # no heartbeat for longer than the caller's silent_after


@dataclass(frozen=True)
class ConnectionGroup:
    application_name: str
    state: str  # the session's pg_stat_activity state (active, idle, ...), not a job's
    connections: int
    max_connections: int


@dataclass(frozen=True)
class HealthInputs:
    oldest_wait_s: float | None  # oldest available job outside paused queues
    available: int
    succeeded: int  # in the window
    failed: int
    expired_leases: int  # running jobs whose lease ran out more than the grace ago
    long_running: int
    dead_recent: int  # jobs that went dead in the window
    workers: int
    silent_workers: int


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# --- periodic tasks --------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleInfo:
    """A registered schedule: its next tick (from its cursor; in the past while no worker
    runs it) and its latest enqueued tick with that job's state (None once pruned)."""

    name: str
    cron: str
    tz: str
    catch_up: str
    queue: str
    next_run: datetime | None
    last_run: datetime | None
    last_job_id: int | None
    last_job_state: str | None
    missed: int
    checked_until: datetime
    registered_at: datetime

    @classmethod
    def from_row(cls, *, last_tick: datetime | None, **columns: Any) -> ScheduleInfo:
        from unbroken.periodic import Schedule

        try:
            shown = Schedule(columns["name"], columns["cron"], columns["tz"], "none", 1.0)
            next_run: datetime | None = shown.local(shown.next_tick(columns["checked_until"]))
        except Exception:  # a row written by hand with a cron or zone this version refuses
            next_run = None
        last_run = last_tick
        if last_run is not None and next_run is not None:
            last_run = last_run.astimezone(next_run.tzinfo)
        return cls(**columns, next_run=next_run, last_run=last_run)


# --- workflows -------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkflowSummary:
    """A workflow and its jobs counted: succeeded, failed (dead or cancelled), live."""

    id: int
    name: str
    created_at: datetime
    steps: int
    succeeded: int
    failed: int
    live: int
    last_finished_at: datetime | None

    @property
    def state(self) -> str:
        """running while a job is live; else succeeded, or failed when one did not."""
        if self.live:
            return "running"
        return "failed" if self.failed else "succeeded"


@dataclass(frozen=True)
class WorkflowStep:
    """One job of a workflow: its state and the jobs it waits for (`after`, in order)."""

    id: int
    task: str
    queue: str
    state: str
    attempt: int
    max_attempts: int
    upstream_left: int | None
    cancel_requested: bool
    result: Any
    finished_at: datetime | None
    after: list[int]
    run_anyway: bool


# --- CDC pipelines ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineInfo:
    """One CDC pipeline as its worker last wrote it (unbroken.cdc): state, position, lag."""

    name: str
    state: str  # waiting, snapshotting, streaming, failed, stopped
    position: str | None  # the last source LSN committed with sink data, '0/16B3748'
    lag_bytes: int | None
    lag_seconds: float | None
    retained_wal_bytes: int | None  # WAL the source keeps for the slot
    changes: int
    updated_at: datetime
    last_error: str | None
    dead_letters: int
    schema_changes: int


@dataclass(frozen=True)
class PipelineSchemaChange:
    id: int
    relation: str
    lsn: str | None
    before: Any
    after: Any
    created_at: datetime


@dataclass(frozen=True)
class PipelineDeadLetter:
    id: int
    lsn: str | None
    relation: str | None
    error: str
    created_at: datetime


@dataclass(frozen=True)
class PipelineDetail(PipelineInfo):
    """A pipeline with where it reads from, and its newest schema changes and dead letters."""

    slot_name: str
    publication: str
    source: str  # the source URL without its password
    system_identifier: str | None
    database: str | None
    tables: list[str]
    recent_schema_changes: list[PipelineSchemaChange] = field(default_factory=list)
    recent_dead_letters: list[PipelineDeadLetter] = field(default_factory=list)
