"""Turning a task call into a job row: validation, serialisation, and the insert itself.

Everything that can be wrong with a job is caught here, before a byte is written: an
argument that does not fit the task's signature, one that JSON cannot hold, a payload
over the size limit. A refused job raises `EnqueueError` with one line naming the task
and the problem; a batch is refused whole.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from unbroken.errors import EnqueueError

_UNSAFE_NAME = re.compile(r"[\t\n\r\\]")


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-call options; None means "the task's default"."""

    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    unique_key: str | None = None
    max_attempts: int | None = None


@dataclass(slots=True)
class JobRow:
    """A validated job, ready to insert."""

    queue: str
    task: str
    args: str  # JSON text: {"args": [...], "kwargs": {...}}
    priority: int
    run_at: datetime | None
    max_attempts: int
    unique_key: str | None

    def params(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "task": self.task,
            "args": Jsonb(self.args, dumps=_identity),
            "priority": self.priority,
            "run_at": self.run_at,
            "max_attempts": self.max_attempts,
            "unique_key": self.unique_key,
        }


def _identity(text: str) -> str:
    return text


# One encoder, built once: json.dumps() with options builds a new one on every call.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def argument_checker(
    signature: inspect.Signature | None,
) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
    """A fast check that arguments fit `signature` (raises TypeError like bind() does).

    Plain signatures (named parameters, no defaults, no *args/**kwargs) are checked by
    counting; anything else falls back to `Signature.bind`.
    """
    if signature is None:
        return lambda args, kwargs: None
    params = list(signature.parameters.values())
    plain = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
    if not plain:

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            signature.bind(*args, **kwargs)

        return bind
    names = [p.name for p in params]
    count = len(names)

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(args) + len(kwargs) != count or (
            kwargs and not all(k in names[len(args) :] for k in kwargs)
        ):
            signature.bind(*args, **kwargs)  # raises the precise TypeError

    return check


def serialise_args(
    task: str,
    check: Callable[[tuple[Any, ...], dict[str, Any]], None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str:
    """JSON for the job's arguments, after checking they fit the task's signature."""
    try:
        check(args, kwargs)
    except TypeError as exc:
        raise EnqueueError(f"task {task}: arguments do not fit its signature: {exc}") from None
    try:
        return _encode({"args": list(args), "kwargs": kwargs})
    except (TypeError, ValueError) as exc:
        raise EnqueueError(f"task {task}: arguments cannot be serialised to JSON: {exc}") from None


def make_row(
    *,
    task: str,
    check: Callable[[tuple[Any, ...], dict[str, Any]], None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: str,
    priority: int | Callable[..., int],
    max_attempts: int,
    unique: bool | Callable[..., str] | None,
    options: EnqueueOptions,
    max_payload_bytes: int,
    now: Callable[[], datetime],
) -> JobRow:
    payload = serialise_args(task, check, args, kwargs)
    if len(payload) > max_payload_bytes:
        raise EnqueueError(
            f"task {task}: arguments are {len(payload):,} bytes, over the limit of "
            f"{max_payload_bytes:,} (UNBROKEN_MAX_PAYLOAD_BYTES); store big data in a table "
            "and pass its key"
        )
    if options.priority is not None:
        prio = options.priority
    elif callable(priority):
        prio = int(priority(*args, **kwargs))
    else:
        prio = priority
    if not -32768 <= prio <= 32767:
        raise EnqueueError(f"task {task}: priority {prio} is outside -32768..32767")
    attempts = options.max_attempts if options.max_attempts is not None else max_attempts
    if attempts < 1:
        raise EnqueueError(f"task {task}: max_attempts must be >= 1, got {attempts}")
    key = options.unique_key
    if key is None and unique:
        key = str(unique(*args, **kwargs)) if callable(unique) else f"{task}:{payload}"
    run_at = options.run_at
    if options.delay is not None:
        seconds = (
            options.delay.total_seconds()
            if isinstance(options.delay, timedelta)
            else float(options.delay)
        )
        if seconds < 0:
            raise EnqueueError(f"task {task}: delay must be >= 0 seconds, got {seconds}")
        run_at = now() + timedelta(seconds=seconds)
    if run_at is not None and run_at.tzinfo is None:
        raise EnqueueError(f"task {task}: run_at must be timezone-aware, got {run_at}")
    q = options.queue or queue
    if not 1 <= len(q) <= 128 or _UNSAFE_NAME.search(q):
        raise EnqueueError(
            f"task {task}: queue name {q!r} must be 1 to 128 characters without tabs, "
            "newlines or backslashes"
        )
    return JobRow(q, task, payload, prio, run_at, attempts, key)


def many_params(rows: Sequence[JobRow]) -> dict[str, Any]:
    """Column arrays for job_insert_many: one statement for the whole batch."""
    return {
        "queues": [r.queue for r in rows],
        "tasks": [r.task for r in rows],
        "args": [r.args for r in rows],
        "priorities": [r.priority for r in rows],
        "run_ats": [r.run_at for r in rows],
        "max_attempts": [r.max_attempts for r in rows],
        "unique_keys": [r.unique_key for r in rows],
    }


def copy_text(ids: Sequence[int], rows: Sequence[JobRow], now: datetime) -> str:
    """COPY text-format lines; JSON escapes control characters, so only backslashes need
    doubling, and names were checked for tabs, newlines and backslashes at validation."""
    stamp = now.isoformat()
    lines = []
    for job_id, r in zip(ids, rows, strict=True):
        if r.run_at is None or r.run_at <= now:
            state, run_at = "available", stamp if r.run_at is None else r.run_at.isoformat()
        else:
            state, run_at = "scheduled", r.run_at.isoformat()
        args = r.args.replace("\\", "\\\\") if "\\" in r.args else r.args
        lines.append(
            f"{job_id}\t{r.queue}\t{r.task}\t{args}\t{state}\t{r.priority}\t{run_at}"
            f"\t{r.max_attempts}\n"
        )
    return "".join(lines)
