"""A small, known job table for the operator tests (CLI, store, dashboard, browser).

Rows are inserted with SQL after migrating, so these tests do not depend on the enqueue
API or a running worker. Every job state, a live and a silent worker, a stuck job, a long
job with progress, dead letters in two groups (one with markup in its text) and an hour
of per-minute statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg

from unbroken import migrations

HOSTILE = "<script>alert('x')</script>"


@dataclass
class Seeded:
    available: list[int] = field(default_factory=list)
    scheduled: int = 0
    running: int = 0  # healthy, reports progress
    stuck: int = 0  # running with an expired lease
    retryable: int = 0
    dead_http: list[int] = field(default_factory=list)  # three alike
    dead_hostile: int = 0  # markup in its args and error
    cancelled: int = 0
    succeeded: list[int] = field(default_factory=list)


def _insert(conn: psycopg.Connection[Any], **cols: Any) -> int:
    # Test-only SQL assembly: the column names and _Sql expressions are literals of this file.
    names, slots, values = list(cols), [], []
    for value in cols.values():
        if isinstance(value, _Sql):
            slots.append(str(value))
        elif isinstance(value, dict | list):
            slots.append("%s::jsonb")
            values.append(json.dumps(value))
        else:
            slots.append("%s")
            values.append(value)
    query = (
        f"INSERT INTO unbroken.jobs ({', '.join(names)}) VALUES ({', '.join(slots)}) RETURNING id"
    )
    row = conn.execute(query.encode(), values).fetchone()
    assert row is not None
    return int(row[0])


def error(attempt: int, type_: str, message: str, kind: str = "failed") -> dict[str, Any]:
    return {
        "attempt": attempt,
        "at": "2025-01-01T00:00:00+00:00",
        "worker": "host-a:1:w1",
        "type": type_,
        "message": message,
        "traceback": f'Traceback (most recent call last):\n  File "task.py", line 3\n{type_}: '
        f"{message}\n",
        "kind": kind,
    }


def seed(conn: psycopg.Connection[Any]) -> Seeded:
    """Migrate and fill the database; `conn` must be in autocommit mode."""
    migrations.migrate(conn)
    s = Seeded()
    conn.execute(
        "INSERT INTO unbroken.workers (id, host, pid, queues, concurrency, running, heartbeat_at)"
        " VALUES ('host-a:1:w1', 'host-a', 1, '{default,etl}', 8, 1, now()),"
        " ('host-b:2:w2', 'host-b', 2, '{default}', 4, 1, now() - interval '10 minutes')"
    )
    conn.execute("INSERT INTO unbroken.queues (name, paused) VALUES ('reports', true)")
    for priority, user in ((0, 1), (0, 2), (10, 3)):
        s.available.append(
            _insert(
                conn,
                task="emails.send",
                args={"user_id": user, "template": "welcome"},
                priority=priority,
                run_at=_ago("7 minutes"),
                created_at=_ago("8 minutes"),
            )
        )
    conn.execute(
        "INSERT INTO unbroken.jobs (queue, task, args, run_at) VALUES"
        " ('reports', 'reports.build', '{}', now() - interval '2 hours')"
    )
    s.scheduled = _insert(
        conn, task="emails.send", state="scheduled", run_at=_ago("-1 hour"), args={"user_id": 9}
    )
    s.running = _insert(
        conn,
        queue="etl",
        task="sync.issues",
        state="running",
        attempt=1,
        worker_id="host-a:1:w1",
        lease_expires_at=_ago("-30 seconds"),
        attempted_at=_ago("5 minutes"),
        args={"project": "ALPHA"},
        checkpoint={"cursor": 420},
        progress={
            "total": 1000,
            "processed": 420,
            "failed": 3,
            "rate": 120.5,
            "eta_s": 4.8,
            "checkpoint_at": "now",
        },
    )
    conn.execute(
        "UPDATE unbroken.jobs SET progress = jsonb_set(progress, '{checkpoint_at}',"
        " to_jsonb(now() - interval '5 seconds')) WHERE id = %s",
        [s.running],
    )
    s.stuck = _insert(
        conn,
        task="emails.send",
        state="running",
        attempt=2,
        worker_id="host-b:2:w2",
        lease_expires_at=_ago("3 minutes"),
        attempted_at=_ago("12 minutes"),
        args={"user_id": 7},
    )
    s.retryable = _insert(
        conn,
        task="emails.send",
        state="retryable",
        attempt=1,
        run_at=_ago("-5 minutes"),
        errors=[error(1, "TimeoutError", "SMTP timed out")],
        args={"user_id": 8},
    )
    for n in range(3):
        s.dead_http.append(
            _insert(
                conn,
                queue="etl",
                task="sync.issues",
                state="dead",
                attempt=3,
                max_attempts=3,
                finished_at=_ago(f"{n + 1} minutes"),
                attempted_at=_ago(f"{n + 2} minutes"),
                args={"project": f"P{n}"},
                errors=[error(a, "HTTPError", "502 Bad Gateway") for a in (1, 2, 3)],
            )
        )
    s.dead_hostile = _insert(
        conn,
        task="emails.send",
        state="dead",
        attempt=1,
        max_attempts=1,
        finished_at=_ago("20 minutes"),
        attempted_at=_ago("21 minutes"),
        args={"note": HOSTILE},
        errors=[error(1, "ValueError", f"bad input {HOSTILE}", kind="permanent")],
    )
    s.cancelled = _insert(
        conn, task="emails.send", state="cancelled", finished_at=_ago("1 minute"), args={}
    )
    for n in range(6):
        s.succeeded.append(
            _insert(
                conn,
                task="emails.send",
                state="succeeded",
                attempt=1,
                attempted_at=_ago(f"{10 + n} minutes"),
                finished_at=_ago(f"{10 + n} minutes", plus_s=n + 1),
                args={"user_id": 100 + n},
            )
        )
    # An hour of per-minute counters: steady throughput, a burst of failures 10 minutes ago.
    conn.execute(
        "INSERT INTO unbroken.stats_minutely (minute, queue, task, succeeded, failed, dead,"
        " runtime_ms)"
        " SELECT date_trunc('minute', now()) - make_interval(mins => m), 'default',"
        " 'emails.send', 40 + (m % 7) * 3, CASE WHEN m BETWEEN 8 AND 12 THEN 15 ELSE 1 END,"
        " CASE WHEN m = 10 THEN 1 ELSE 0 END, (40 + (m % 7) * 3) * 120"
        " FROM generate_series(0, 59) AS m"
    )
    conn.execute(
        "INSERT INTO unbroken.stats_minutely (minute, queue, task, succeeded, failed, dead,"
        " runtime_ms)"
        " SELECT date_trunc('minute', now()) - make_interval(mins => m), 'etl', 'sync.issues',"
        " 5, CASE WHEN m < 4 THEN 2 ELSE 0 END, CASE WHEN m < 3 THEN 1 ELSE 0 END, 5 * 2000"
        " FROM generate_series(0, 59) AS m"
    )
    return s


class _Sql(str):
    """An SQL expression that _insert writes into the statement instead of binding it."""


def _ago(text: str, plus_s: int = 0) -> _Sql:
    return _Sql(f"now() - interval '{text}' + interval '{plus_s} seconds'")


def state_of(url: str, job_id: int) -> str | None:
    """A job's state as another session sees it (None when it is gone)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT state::text FROM unbroken.jobs WHERE id = %s", [job_id]
        ).fetchone()
    return None if row is None else str(row[0])
