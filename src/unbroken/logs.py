"""Per-job log lines, and the two formats the CLI writes them in (plain and JSON).

Each event of a job is one record on the `unbroken.jobs` logger, from one place:

| event          | level   | by          | when                                             |
|----------------|---------|-------------|--------------------------------------------------|
| started        | DEBUG   | executor    | an attempt starts                                |
| succeeded      | DEBUG   | completer   | its success was recorded                         |
| failed         | WARNING | completer   | an attempt failed and its retry was recorded     |
| dead           | ERROR   | completer   | recorded dead (no attempt left, or permanent)    |
| cancelled      | INFO    | completer   | recorded cancelled                               |
| snoozed        | DEBUG   | completer   | the task snoozed (no attempt spent)              |
| handed_back    | INFO    | completer   | shutdown handed it back (no attempt spent)       |
| task_not_found | ERROR   | completer   | no such task here: offered again later, unspent  |
| fenced         | INFO    | completer   | the outcome matched no row: the job moved on     |
| rescued        | WARNING | maintenance | the leader took it from a worker whose lease ran out |

Outcome lines are written once the database has accepted the outcome, and tell what it
recorded: a retry that the row turned into dead (no attempt left) or into cancelled (a
cancel was asked) is logged as dead or cancelled. Started and succeeded lines are DEBUG,
shown by `unbroken worker -v`; building them costs nothing when they are not shown.

The fields travel on the record as `record.unbroken` (a dict with the keys of
`JSON_KEYS` after `event`), so any handler can use them; `JsonFormatter` writes every
record, job line or not, as one JSON object with all of `JSON_KEYS` (null where a key does
not apply).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from unbroken.states import JobState, OutcomeKind

if TYPE_CHECKING:
    from unbroken.runtime.completer import Outcome

JOBS = logging.getLogger("unbroken.jobs")

JSON_KEYS = (
    "ts",
    "level",
    "logger",
    "event",
    "message",
    "job_id",
    "task",
    "queue",
    "attempt",
    "max_attempts",
    "state",
    "reason",
    "error",
    "delay",
    "worker",
)
_FIELDS = JSON_KEYS[5:]
MESSAGE_LIMIT = 500  # characters of an error message in a plain line (JSON keeps 4,000)


def job_line(
    level: int,
    event: str,
    message: str,
    *,
    job_id: int,
    task: str,
    queue: str,
    attempt: int,
    max_attempts: int | None,
    state: str | None = None,
    reason: str | None = None,
    error: str | None = None,
    delay: float | None = None,
    worker: str | None = None,
) -> None:
    """Log one job event with its fields (see the module's table)."""
    fields = {
        "event": event,
        "job_id": job_id,
        "task": task,
        "queue": queue,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "state": state,
        "reason": reason,
        "error": error,
        "delay": None if delay is None else round(delay, 3),
        "worker": worker,
    }
    JOBS.log(level, message, extra={"unbroken": fields})


def started(
    job_id: int, task: str, queue: str, attempt: int, max_attempts: int, worker: str
) -> None:
    if JOBS.isEnabledFor(logging.DEBUG):
        job_line(
            logging.DEBUG,
            "started",
            f"job {job_id} {task} attempt {attempt}/{max_attempts} started (queue {queue})",
            job_id=job_id,
            task=task,
            queue=queue,
            attempt=attempt,
            max_attempts=max_attempts,
            state=JobState.RUNNING,
            worker=worker,
        )


def outcome(o: Outcome, state: JobState, worker: str) -> None:
    """The line for an outcome the database recorded, `state` being the state it wrote."""
    err = _error_of(o.error)
    kind = err.get("kind")
    reason: str | None = kind if kind else (None if o.kind == OutcomeKind.SUCCEEDED else o.kind)
    error = f"{err['type']}: {err['message']}" if err else None
    head = f"job {o.job_id} {o.task} attempt {o.attempt}/{o.max_attempts}"
    failed = f"failed: {err.get('type')}: {_short(err.get('message'))}"
    delay: float | None = None
    if state == JobState.SUCCEEDED:
        level, event = logging.DEBUG, "succeeded"
        text = f" succeeded in {o.runtime_ms / 1000:.3f} s"
    elif state == JobState.RETRYABLE:
        level, event, delay = logging.WARNING, "failed", o.delay
        text = f" {failed}; retry in {_seconds(o.delay)}"
    elif state == JobState.DEAD:
        level, event = logging.ERROR, "dead"
        why = "a permanent error, not retried" if kind == "permanent" else "no attempt left"
        text = f" {failed}; dead: {why}"
    elif state == JobState.CANCELLED:
        level, event = logging.INFO, "cancelled"
        if o.kind == OutcomeKind.CANCELLED:
            text = " cancelled: it stopped at the cancel request"
        else:
            reason = "cancel_requested"
            text = f" {failed if err else o.kind}; cancelled: a cancel was requested"
    elif state == JobState.SCHEDULED and o.kind == OutcomeKind.UNKNOWN_TASK:
        level, event, delay = logging.ERROR, "task_not_found", o.delay
        text = (
            f" (queue {o.queue}): no task named {o.task!r} in this worker's app (worker "
            f"{worker}); it will be offered again in {_seconds(o.delay)}, attempt not spent, "
            "and waits until a worker that knows it runs it or it is cancelled. Is the "
            "task's module imported by the worker's app (--app), under the same name?"
        )
    elif state == JobState.SCHEDULED:
        level, event, delay = logging.DEBUG, "snoozed", o.delay
        text = f" snoozed for {_seconds(o.delay)} (attempt not spent)"
    else:  # available: handed back
        level, event = logging.INFO, "handed_back"
        text = " handed back unfinished at shutdown (attempt not spent)"
    if not JOBS.isEnabledFor(level):
        return
    job_line(
        level,
        event,
        head + text,
        job_id=o.job_id,
        task=o.task,
        queue=o.queue,
        attempt=o.attempt,
        max_attempts=o.max_attempts,
        state=state,
        reason=reason,
        error=error,
        delay=delay,
        worker=worker,
    )


def fenced(o: Outcome, worker: str) -> None:
    job_line(
        logging.INFO,
        "fenced",
        f"job {o.job_id} {o.task} attempt {o.attempt}/{o.max_attempts}: outcome {o.kind} not "
        "recorded, the job moved on (rescued, cancelled or retried elsewhere)",
        job_id=o.job_id,
        task=o.task,
        queue=o.queue,
        attempt=o.attempt,
        max_attempts=o.max_attempts,
        reason=o.kind,
        worker=worker,
    )


def rescued(
    job_id: int,
    task: str,
    queue: str,
    attempt: int,
    max_attempts: int,
    state: JobState,
    worker: str,
) -> None:
    """A rescue by the leader; `worker` is the one whose lease ran out."""
    job_line(
        logging.WARNING,
        "rescued",
        f"job {job_id} {task} attempt {attempt}/{max_attempts} rescued: lease expired: worker "
        f"{worker} stopped renewing it; now {state}",
        job_id=job_id,
        task=task,
        queue=queue,
        attempt=attempt,
        max_attempts=max_attempts,
        state=state,
        reason="lease_expired",
        worker=worker,
    )


def _error_of(error: str | None) -> dict[str, Any]:
    if error is None:
        return {}
    try:
        found = json.loads(error)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _short(message: Any) -> str:
    text = str(message or "").strip()
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= MESSAGE_LIMIT else first[: MESSAGE_LIMIT - 3] + "..."


def _seconds(delay: float | None) -> str:
    seconds = delay or 0.0
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


# --- formats ---------------------------------------------------------------------------------
def _utc(created: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{stamp}.{int(created % 1 * 1000):03d}Z"


class PlainFormatter(logging.Formatter):
    """One line per record: `2025-06-01T12:00:00.123Z WARNING unbroken.jobs: job 42 ...`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{_utc(record.created)} {record.levelname} {record.name}: {record.message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, always with the keys of `JSON_KEYS` (null when unused)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        fields: dict[str, Any] = getattr(record, "unbroken", None) or {}
        data: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": fields.get("event"),
            "message": message,
        }
        for key in _FIELDS:
            data[key] = fields.get(key)
        return json.dumps(data, default=str, ensure_ascii=False)
