"""The operator store: what `unbroken jobs|dlq|queues|stats|...` and the dashboard read and do.

One small sync class over the named queries in `sql/admin.sql` (and the guarded writes in
`sql/jobs.sql`), so the CLI and the dashboard cannot disagree about what "stuck" or "a
dead-letter group" means. It takes either one connection (tests, scripts) or a pool from
`Database(...).pool(role)`, from which it borrows a connection per call.

Bulk actions walk the matching ids in ascending batches (keyset, not OFFSET) and apply the
guarded writes of jobs.sql to each batch: a job that changed state meanwhile is skipped by
the write itself, and a million-row action never holds one long transaction.

Every json/jsonb value the store reads is decoded by `lenient_loads`, on the store's own cursors:
a value nested deeper than a payload may be (another client's SQL wrote it) comes back
as an `Undecodable` string with its text cut short, so no list, page or `--json` output
fails on one row, and nothing later recurses through it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import Connection, Cursor
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from unbroken.db._sync.pool import RolePool
from unbroken.enqueue import MAX_PAYLOAD_DEPTH, nested_deeper_than
from unbroken.errors import ConfigError
from unbroken.sql import queries

STATES = ("scheduled", "available", "running", "retryable", "succeeded", "dead", "cancelled")
FINAL_STATES = ("succeeded", "dead", "cancelled")
RETRYABLE_STATES = ("dead", "cancelled")  # what job_retry_many accepts
CANCELLABLE_STATES = ("scheduled", "available", "retryable", "running")
BATCH = 500  # ids per bulk write: one short statement each, progress visible between them

Progress = Callable[[int], None]  # called with how many jobs a batch just covered


# --- values ------------------------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h30m', '2d' -> seconds; anything else is a ConfigError."""
    compact = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(compact):
        match = _DURATION.match(compact, pos)
        if not match:
            break
        unit = match[2].lower() if match[2] else None
        total += float(match[1]) * _UNIT[unit]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ConfigError(f"{text!r} is not a duration (examples: 30s, 5m, 1h30m, 2d)")
    return total


def format_age(seconds: float | None) -> str:
    """Compact human age: '45s', '3m12s', '2h05m', '3d04h'; '-' when unknown."""
    if seconds is None or math.isnan(seconds):
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and decimals as plain JSON values (for `--json` and the API)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(jsonable(value), indent=indent, sort_keys=False)


class Undecodable(str):
    """A json/jsonb value the store would not decode: "<undecodable: why> its text…".

    A string, so every view (table, page, `--json`, the API) shows it without a special
    case; `reason` says why, `SHOWN` characters of the text are kept."""

    SHOWN = 200
    reason: str

    def __new__(cls, reason: str, text: str) -> Undecodable:
        cut = text if len(text) <= cls.SHOWN else text[: cls.SHOWN] + "…"
        value = super().__new__(cls, f"<undecodable: {reason}> {cut}")
        value.reason = reason
        return value


def lenient_loads(data: bytes | str) -> Any:
    """json.loads for the store's reads, which never raises (see the module docstring)."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    if nested_deeper_than(text, MAX_PAYLOAD_DEPTH):
        return Undecodable("nested too deeply to show", text)
    try:
        return json.loads(text)
    except RecursionError:
        return Undecodable("nested too deeply to show", text)
    except ValueError as exc:
        return Undecodable(f"not JSON ({exc})", text)


def shown_json(value: Any, indent: int | None = None) -> str:
    """A value as JSON text for a person to read; an Undecodable as its own text."""
    if isinstance(value, Undecodable):
        return str(value)
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


# --- filters ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobFilter:
    """What an operator narrows jobs by; every field optional. `args` is JSON or plain text."""

    states: tuple[str, ...] | None = None
    queue: str | None = None
    task: str | None = None
    older_than: float | None = None  # seconds since the job was created
    args: str | None = None  # a JSON object matches by containment, other text by substring

    def __post_init__(self) -> None:
        for state in self.states or ():
            if state not in STATES:
                raise ConfigError(f"unknown job state {state!r} (one of: {', '.join(STATES)})")

    @classmethod
    def build(
        cls,
        state: str | Sequence[str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        older_than: str | float | None = None,
        args: str | None = None,
    ) -> JobFilter:
        """From loose operator input: 'dead,cancelled', '2h', empty strings meaning 'any'."""
        if isinstance(state, str):
            state = [s.strip() for s in state.split(",") if s.strip()]
        age = parse_duration(older_than) if isinstance(older_than, str) and older_than else None
        if isinstance(older_than, int | float):
            age = float(older_than)
        return cls(
            states=tuple(state) if state else None,
            queue=queue or None,
            task=task or None,
            older_than=age,
            args=args.strip() if args and args.strip() else None,
        )

    def restricted_to(self, allowed: Sequence[str]) -> JobFilter:
        """The same filter limited to `allowed` states (what an action can apply to)."""
        # () matches nothing: none of the asked states is one the action applies to.
        states = tuple(s for s in (allowed if self.states is None else self.states) if s in allowed)
        return JobFilter(states, self.queue, self.task, self.older_than, self.args)

    def params(self) -> dict[str, Any]:
        args_json: str | None = None
        args_text: str | None = None
        if self.args is not None:
            try:
                parsed = json.loads(self.args)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                args_json = json.dumps(parsed)
            else:
                args_text = self.args
        return {
            "states": None if self.states is None else list(self.states),
            "queue": self.queue,
            "task": self.task,
            "older_than": self.older_than,
            "args_json": args_json,
            "args_text": args_text,
        }

    def describe(self) -> str:
        parts = []
        if self.states is not None:
            parts.append(f"state={','.join(self.states) or '(none)'}")
        if self.queue:
            parts.append(f"queue={self.queue}")
        if self.task:
            parts.append(f"task={self.task}")
        if self.older_than is not None:
            parts.append(f"older than {format_age(self.older_than)}")
        if self.args:
            parts.append(f"args~{self.args}")
        return " ".join(parts) or "all jobs"


# --- rows -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSummary:
    id: int
    queue: str
    task: str
    state: str
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
    checkpoint_at, chunks, done, errors; see unbroken.progress) and the short forms a
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
            extra={k: v for k, v in progress.items() if k not in cls.KNOWN},
        )


@dataclass(frozen=True)
class JobDetail:
    id: int
    queue: str
    task: str
    args: Any
    state: str
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

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def progress_view(self) -> ProgressView | None:
        return ProgressView.from_json(self.progress, self.now)


@dataclass(frozen=True)
class StateCount:
    queue: str
    state: str
    jobs: int


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
    dead: int
    oldest_wait_s: float | None
    priorities: list[PriorityBacklog] = field(default_factory=list)


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


@dataclass(frozen=True)
class TaskStats:
    queue: str
    task: str
    succeeded: int
    failed: int  # failed attempts, dead ones included
    dead: int
    per_minute: float  # finished attempts per minute over the window
    failure_rate: float | None  # failed / (succeeded + failed)
    avg_s: float | None  # mean attempt duration from the per-minute counters
    p50_s: float | None  # percentiles from the succeeded jobs still in the table
    p95_s: float | None
    p99_s: float | None


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


@dataclass(frozen=True)
class StuckJob:
    id: int
    queue: str
    task: str
    attempt: int
    max_attempts: int
    worker_id: str | None
    attempted_at: datetime | None
    lease_expires_at: datetime | None
    progress: Any
    running_s: float | None
    lease_overdue_s: float | None  # > 0: the lease ran out this long ago
    heartbeat_age_s: float | None  # None: the worker is not registered (any more)
    reason: str  # lease_expired | long_running


@dataclass(frozen=True)
class LongJob:
    id: int
    queue: str
    task: str
    attempt: int
    max_attempts: int
    worker_id: str | None
    attempted_at: datetime | None
    lease_expires_at: datetime | None
    progress: ProgressView | None
    has_checkpoint: bool
    rescues: int
    running_s: float | None


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
    silent: bool


@dataclass(frozen=True)
class ConnectionGroup:
    application_name: str
    state: str
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


@dataclass(frozen=True)
class BulkResult:
    matched: int  # jobs the filter selected
    changed: int  # jobs the guarded write actually changed
    ids: list[int]  # the changed ones (first 1000)


# --- the store ------------------------------------------------------------------------------
class OperatorStore:
    """Operator reads and actions over one connection or one pool."""

    def __init__(self, source: Connection[Any] | RolePool, schema: str = "unbroken") -> None:
        self._source = source
        self._q = queries(schema)

    @contextmanager
    def _conn(self) -> Iterator[Connection[Any]]:
        if isinstance(self._source, RolePool):
            with self._source.connection() as conn:
                yield conn
        else:
            yield self._source

    @staticmethod
    def _cursor(conn: Connection[Any]) -> Cursor[dict[str, Any]]:
        """A dict-row cursor whose JSON values are decoded by `lenient_loads` (the connection's
        own adapters are left alone: it may be the caller's)."""
        cur = conn.cursor(row_factory=dict_row)
        set_json_loads(lenient_loads, cur)
        return cur

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._conn() as conn, self._cursor(conn) as cur:
            cur.execute(self._q[name], params or {})
            return cur.fetchall()

    def _one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        rows = self._rows(name, params)
        if not rows:
            raise LookupError(f"query {name} returned no row")
        return rows[0]

    # --- jobs ---------------------------------------------------------------------------
    def job_list(
        self, flt: JobFilter, *, limit: int = 50, before_id: int | None = None
    ) -> list[JobSummary]:
        params = {**flt.params(), "limit": limit, "before_id": before_id}
        return [JobSummary(**row) for row in self._rows("job_list", params)]

    def job_count(self, flt: JobFilter) -> int:
        return int(self._one("job_count_matching", flt.params())["jobs"])

    def job_get(self, job_id: int) -> JobDetail | None:
        with self._conn() as conn, self._cursor(conn) as cur:
            cur.execute(self._q["job_get"], {"id": job_id})
            row = cur.fetchone()
            if row is None:
                return None
            now_row = conn.execute("SELECT now()").fetchone()
        entries = row.pop("errors") or []
        if not isinstance(entries, list):  # an Undecodable: one entry that says so
            entries = [entries]
        errors = [AttemptError.from_json(e) for e in entries]
        now = now_row[0] if now_row else datetime.now().astimezone()
        return JobDetail(**row, errors=errors, now=now)

    def job_retry(self, ids: Sequence[int]) -> list[int]:
        """Put dead or cancelled jobs back in line; returns the ids that were."""
        rows = self._rows("job_retry_many", {"ids": list(ids)})
        return [int(r["id"]) for r in rows]

    def job_cancel(self, ids: Sequence[int]) -> list[tuple[int, str]]:
        """Cancel waiting jobs, ask running ones to stop; returns (id, state after)."""
        rows = self._rows("job_cancel_many", {"ids": list(ids)})
        return [(int(r["id"]), str(r["state"])) for r in rows]

    def job_delete(self, ids: Sequence[int], states: Sequence[str] = FINAL_STATES) -> list[int]:
        rows = self._rows("job_delete_many", {"ids": list(ids), "states": list(states)})
        return [int(r["id"]) for r in rows]

    def job_retry_matching(self, flt: JobFilter, progress: Progress | None = None) -> BulkResult:
        """Retry every dead or cancelled job the filter matches, in batches."""
        scoped = flt.restricted_to(RETRYABLE_STATES)
        return self._bulk(scoped, self.job_retry, progress)

    def job_cancel_matching(self, flt: JobFilter, progress: Progress | None = None) -> BulkResult:
        """Cancel every waiting or running job the filter matches, in batches."""
        scoped = flt.restricted_to(CANCELLABLE_STATES)
        return self._bulk(scoped, lambda ids: [i for i, _ in self.job_cancel(ids)], progress)

    def _bulk(
        self,
        flt: JobFilter,
        action: Callable[[list[int]], list[int]],
        progress: Progress | None,
    ) -> BulkResult:
        params = flt.params()
        return self._walk("job_ids_matching", params, action, progress)

    def _walk(
        self,
        ids_query: str,
        params: dict[str, Any],
        action: Callable[[list[int]], list[int]],
        progress: Progress | None,
    ) -> BulkResult:
        after, matched, changed = 0, 0, []
        while True:
            rows = self._rows(ids_query, {**params, "after_id": after, "limit": BATCH})
            ids = [int(r["id"]) for r in rows]
            if not ids:
                break
            done = action(ids)
            matched += len(ids)
            changed.extend(done)
            after = ids[-1]
            if progress is not None:
                progress(len(ids))
        return BulkResult(matched, len(changed), changed[:1000])

    # --- queues -------------------------------------------------------------------------
    def state_counts(self) -> list[StateCount]:
        return [StateCount(**row) for row in self._rows("job_count_by_state")]

    def queue_list(self) -> list[QueueInfo]:
        by_queue: dict[str, list[PriorityBacklog]] = {}
        for row in self._rows("queue_list_by_priority"):
            queue = row.pop("queue")
            by_queue.setdefault(queue, []).append(PriorityBacklog(**row))
        return [
            QueueInfo(**row, priorities=by_queue.get(row["name"], []))
            for row in self._rows("queue_list")
        ]

    def queue_set_paused(self, name: str, paused: bool) -> None:
        with self._conn() as conn:
            conn.execute(self._q["queue_set_paused"], {"name": name, "paused": paused})

    # --- dead letters -------------------------------------------------------------------
    def dead_letter_groups(
        self, *, queue: str | None = None, task: str | None = None, limit: int = 200
    ) -> list[DeadGroup]:
        rows = self._rows("dead_letter_groups", {"queue": queue, "task": task, "limit": limit})
        return [DeadGroup(**row) for row in rows]

    def dead_letter_count(
        self,
        key: str | None = None,
        *,
        queue: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
    ) -> int:
        params = {"key": key, "queue": queue, "task": task, "older_than": older_than}
        return int(self._one("dead_letter_count", params)["jobs"])

    def dead_letter_retry(
        self,
        key: str | None = None,
        *,
        queue: str | None = None,
        task: str | None = None,
        progress: Progress | None = None,
    ) -> BulkResult:
        """Retry one group of dead letters (all of them when key is None)."""
        params = {"key": key, "queue": queue, "task": task, "older_than": None}
        return self._walk("dead_letter_ids", params, self.job_retry, progress)

    def dead_letter_purge(
        self,
        key: str | None = None,
        *,
        queue: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
        progress: Progress | None = None,
    ) -> BulkResult:
        """Delete one group of dead letters (all of them when key is None) for good."""
        params = {"key": key, "queue": queue, "task": task, "older_than": older_than}
        return self._walk(
            "dead_letter_ids", params, lambda ids: self.job_delete(ids, ("dead",)), progress
        )

    # --- statistics ---------------------------------------------------------------------
    def task_stats(self, window_s: float = 3600.0) -> list[TaskStats]:
        pcts = {
            (r["queue"], r["task"]): r["percentiles"]
            for r in self._rows("stats_duration_percentiles", {"window": window_s})
        }
        minutes = max(window_s / 60.0, 1.0)
        out = []
        for r in self._rows("stats_by_task", {"window": window_s}):
            done = int(r["succeeded"]) + int(r["failed"])
            p = pcts.pop((r["queue"], r["task"]), None) or [None, None, None]
            out.append(
                TaskStats(
                    queue=r["queue"],
                    task=r["task"],
                    succeeded=int(r["succeeded"]),
                    failed=int(r["failed"]),
                    dead=int(r["dead"]),
                    per_minute=done / minutes,
                    failure_rate=(int(r["failed"]) / done) if done else None,
                    avg_s=(int(r["runtime_ms"]) / done / 1000.0) if done else None,
                    p50_s=p[0],
                    p95_s=p[1],
                    p99_s=p[2],
                )
            )
        return out

    def stats_series(
        self, window_s: float = 3600.0, bucket_s: int = 60, queue: str | None = None
    ) -> list[SeriesPoint]:
        params = {"window": window_s, "bucket": max(60, bucket_s), "queue": queue}
        return [SeriesPoint(**row) for row in self._rows("stats_series", params)]

    # --- runtime ------------------------------------------------------------------------
    def stuck_jobs(self, longer_than_s: float = 3600.0, limit: int = 200) -> list[StuckJob]:
        params = {"longer_than": longer_than_s, "limit": limit}
        return [StuckJob(**row) for row in self._rows("job_list_stuck", params)]

    def long_jobs(self, longer_than_s: float = 60.0, limit: int = 100) -> list[LongJob]:
        with self._conn() as conn:
            row = conn.execute("SELECT now()").fetchone()
        now = row[0] if row else None
        out = []
        for r in self._rows("job_list_progress", {"longer_than": longer_than_s, "limit": limit}):
            r["progress"] = ProgressView.from_json(r["progress"], now)
            out.append(LongJob(**r))
        return out

    def worker_list(self, silent_after_s: float = 60.0) -> list[WorkerInfo]:
        return [
            WorkerInfo(**row, silent=row["heartbeat_age_s"] > silent_after_s)
            for row in self._rows("worker_list")
        ]

    def connection_list(self) -> list[ConnectionGroup]:
        return [ConnectionGroup(**row) for row in self._rows("connection_list")]

    def schema_version(self) -> int | None:
        """The newest applied migration, or None when the schema is not there at all."""
        try:
            return self._one("schema_version").get("version")
        except psycopg.errors.UndefinedTable:
            return None

    def health_inputs(
        self,
        *,
        window_s: float = 900.0,
        lease_grace_s: float = 60.0,
        long_running_s: float = 3600.0,
        silent_after_s: float = 60.0,
    ) -> HealthInputs:
        params = {
            "window": window_s,
            "lease_grace": lease_grace_s,
            "long_running": long_running_s,
            "silent_after": silent_after_s,
        }
        return HealthInputs(**self._one("health_inputs", params))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


__all__ = [
    "STATES",
    "BulkResult",
    "DeadGroup",
    "HealthInputs",
    "JobDetail",
    "JobFilter",
    "JobSummary",
    "OperatorStore",
    "Undecodable",
    "format_age",
    "jsonable",
    "parse_duration",
    "shown_json",
    "to_json",
]
