"""Telemetry events: the contract metrics, Sentry and tracing are built on.

The runtime calls `emit(name, **fields)` at the points below; handlers registered with
`subscribe` receive `(name, fields)`. With no handler an emit costs one truthiness check.
A handler that raises is logged and never breaks the runtime.

| event             | fields                                                                    |
|-------------------|---------------------------------------------------------------------------|
| job.started       | job_id, task, queue, attempt, wait_s (enqueue or due time to start)       |
| job.finished      | job_id, task, queue, attempt, outcome, duration_s, error_type, error      |
|                   | outcome (states.OutcomeKind): succeeded, failed, dead, cancelled,         |
|                   | snoozed, timeout, handback, unknown_task (no such task in this app:       |
|                   | offered again, attempt unspent); a row whose args cannot be decoded       |
|                   | reports dead                                                              |
| batch.flushed     | kind (finish or lease), size, duration_s                                  |
| batch.failed      | kind, size, error_type (the batch is retried, then written one by one)    |
| write.fenced      | job_id, attempt, kind: a stale write changed nothing (lease moved on)     |
| job.rescued       | job_id, worker_id, state (retryable or dead)                              |
| job.promoted      | queue, count                                                              |
| jobs.pruned       | state, count (finished jobs past the retention the leader deleted)        |
| jobs.fetched      | queue_count, count, free_slots                                            |
| leader.changed    | role, holder, is_leader                                                   |
| chunk.committed   | job_id, task, rows, failed, duration_s                                    |
| chunk.retried     | job_id, task, error_type, tries                                           |
| pool.flushed      | role (stale connections were checked and replaced after an error)         |
| schedule.ticked   | schedule, enqueued, missed: one check of a periodic task enqueued ticks   |
|                   | or skipped missed ones (catch-up policy)                                  |
| worker.memory     | rss_mb, soft_mb, hard_mb, over (none, soft or hard): one sample of the    |
|                   | worker's memory, every 0.5 s while a memory limit is set                  |
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("unbroken.telemetry")

Handler = Callable[[str, dict[str, Any]], None]
_handlers: list[Handler] = []


def subscribe(handler: Handler) -> Callable[[], None]:
    """Call `handler(name, fields)` for every event; returns a function that unsubscribes."""
    _handlers.append(handler)

    def unsubscribe() -> None:
        if handler in _handlers:
            _handlers.remove(handler)

    return unsubscribe


def active() -> bool:
    """True when someone listens; hot paths check it before building an event's fields."""
    return bool(_handlers)


def emit(event: str, /, **fields: Any) -> None:
    if not _handlers:
        return
    for handler in tuple(_handlers):
        try:
            handler(event, fields)
        except Exception:
            logger.exception("telemetry handler %r failed on %s", handler, event)
