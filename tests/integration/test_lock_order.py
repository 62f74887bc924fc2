"""Statements that lock many job rows take their locks in one order (by id), so they never
deadlock each other: a worker's lease renewals race its own outcome batches (and an
operator's cancels, and other workers' outcome batches on the shared per-minute counters)
on the same rows all the time.

Real statements on a real server, from real concurrent sessions, each given the rows in its
own random order (as the executor's dict and the completer's buffer give them). A deadlock
is seen twice: as DeadlockDetected in the session that lost, and in pg_stat_database.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from unbroken.sql import queries

Q = queries()
JOBS = 600
BATCH = 150
ROUNDS = 3
TASKS = [f"task{i}" for i in range(8)]  # outcomes spread over several per-minute counter rows


def _claim(conn: psycopg.Connection[Any], worker: str) -> list[tuple[int, int, str]]:
    rows = conn.execute(
        Q["job_get_available"],
        {"queues": ["default"], "limit": JOBS, "worker_id": worker, "lease": 60.0},
    ).fetchall()
    return [(r[0], r[4], r[-1]) for r in rows]


def _enqueue(conn: psycopg.Connection[Any]) -> None:
    payload = json.dumps({"args": [], "kwargs": {}})
    conn.execute(
        Q["job_insert_many"],
        {
            "queues": ["default"] * JOBS,
            "tasks": [TASKS[i % len(TASKS)] for i in range(JOBS)],
            "args": [payload] * JOBS,
            "priorities": [0] * JOBS,
            "run_ats": [None] * JOBS,
            "max_attempts": [5] * JOBS,
            "unique_keys": [None] * JOBS,
        },
    )


def _finish(conn: psycopg.Connection[Any], worker: str, held: list[tuple[int, int, str]]) -> None:
    n = len(held)
    conn.execute(
        Q["job_finish_many"],
        {
            "worker_id": worker,
            "ids": [h[0] for h in held],
            "attempts": [h[1] for h in held],
            "states": ["succeeded"] * n,
            "delays": [None] * n,
            "errors": [None] * n,
            "results": [None] * n,
            "runtimes": [1] * n,
            "claims": [h[2] for h in held],
            "progress": None,
        },
    ).fetchall()


def _renew(conn: psycopg.Connection[Any], worker: str, held: list[tuple[int, int, str]]) -> None:
    conn.execute(
        Q["lease_renew_many"],
        {
            "worker_id": worker,
            "host": "test",
            "pid": 1,
            "queues": ["default"],
            "concurrency": 1,
            "lease": 60.0,
            "ids": [h[0] for h in held],
            "attempts": [h[1] for h in held],
            "claims": [h[2] for h in held],
            "progress": None,
        },
    ).fetchall()


def _deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _race(url: str, actors: list[Callable[[psycopg.Connection[Any]], None]]) -> list[str]:
    """Run each actor on its own session at the same moment; return the deadlocks seen."""
    seen: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(actors))

    def run(actor: Callable[[psycopg.Connection[Any]], None]) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                start.wait()
                actor(conn)
        except psycopg.errors.DeadlockDetected as exc:
            seen.append(str(exc).splitlines()[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in actors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return seen


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_renewals_finishes_and_cancels_racing_on_the_same_rows_never_deadlock(
    database_url: str, app: Any, round_: int
) -> None:
    rng = random.Random(round_)
    before = _deadlocks(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Lose a deadlock quickly if there is one, instead of after the default second.
        conn.execute("SET deadlock_timeout = '20ms'")
        for _ in range(2):
            _enqueue(conn)
        held = {w: _claim(conn, w) for w in ("w1", "w2")}

    def shuffled(rows: list[Any]) -> list[Any]:
        return rng.sample(rows, len(rows))

    def renewing(worker: str) -> Callable[[psycopg.Connection[Any]], None]:
        def act(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SET deadlock_timeout = '20ms'")
            for _ in range(6):
                _renew(conn, worker, shuffled(held[worker]))

        return act

    def finishing(worker: str) -> Callable[[psycopg.Connection[Any]], None]:
        def act(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SET deadlock_timeout = '20ms'")
            rows = shuffled(held[worker])
            for i in range(0, len(rows), BATCH):
                _finish(conn, worker, rows[i : i + BATCH])

        return act

    def cancelling(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET deadlock_timeout = '20ms'")
        everyone = shuffled(held["w1"] + held["w2"])
        for i in range(0, len(everyone), BATCH):
            conn.execute(Q["job_cancel_many"], {"ids": [h[0] for h in everyone[i : i + BATCH]]})

    seen = _race(
        database_url,
        [renewing("w1"), renewing("w2"), finishing("w1"), finishing("w2"), cancelling],
    )
    assert seen == []
    assert _deadlocks(database_url) == before
    with psycopg.connect(database_url, autocommit=True) as conn:
        running = conn.execute("SELECT count(*) FROM unbroken.jobs WHERE state = 'running'")
        assert running.fetchone() == (0,)  # every outcome was written
