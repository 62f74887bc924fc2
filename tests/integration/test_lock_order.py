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
            "limit_keys": [None] * JOBS,
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


WORKFLOWS = 60
# Each workflow: roots U1..U4, then D1 after [U1, U3] and D2 after [U2, U4]. One statement
# ends {U1, U4} of every workflow, another {U2, U3}: each releases (or cancels) both D1 and
# D2, so their triggers reach the same dependents from two sides.
ROOTS, AFTER = 4, ((1, 3), (2, 4))


def _enqueue_workflows(conn: psycopg.Connection[Any], n: int) -> list[list[int]]:
    payload = json.dumps({"args": [], "kwargs": {}})
    steps = ROOTS + len(AFTER)
    edges = [(ROOTS + 1 + i, up, pos) for i, ups in enumerate(AFTER) for pos, up in enumerate(ups)]
    made = []
    for _ in range(n):
        row = conn.execute(
            Q["workflow_insert"],
            {
                "name": "lock order",
                "queues": ["default"] * steps,
                "tasks": ["wf"] * steps,
                "args": [payload] * steps,
                "priorities": [0] * steps,
                "run_ats": [None] * steps,
                "max_attempts": [1] * steps,
                "limit_keys": [None] * steps,
                "upstream": [0] * ROOTS + [len(ups) for ups in AFTER],
                "dep_steps": [e[0] for e in edges],
                "dep_ons": [e[1] for e in edges],
                "dep_positions": [e[2] for e in edges],
                "dep_anyway": [False] * len(edges),
            },
        ).fetchone()
        assert row is not None
        made.append(list(row[1]))
    return made


@pytest.mark.parametrize("end", ["succeeded", "dead"])
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_workflow_ends_racing_on_shared_dependents_never_deadlock(
    database_url: str, app: Any, round_: int, end: str
) -> None:
    """Two outcome batches, a lease rescue and a cancel reach the same pending dependents
    through the workflow trigger, each from its own side, in random orders."""
    rng = random.Random(round_)
    before = _deadlocks(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        flows = _enqueue_workflows(conn, WORKFLOWS)
        held = {h[0]: h for h in _claim(conn, "w")}
        # A third of the workflows run out of lease: the rescue ends those roots (dead).
        expiring = [ids[:ROOTS] for ids in flows[: WORKFLOWS // 3]]
        conn.execute(
            "UPDATE unbroken.jobs SET lease_expires_at = now() - interval '1 hour'"
            " WHERE id = ANY(%s)",
            [[i for ids in expiring for i in ids]],
        )
    sides = (
        [held[ids[0]] for ids in flows] + [held[ids[3]] for ids in flows],
        [held[ids[1]] for ids in flows] + [held[ids[2]] for ids in flows],
    )

    def finishing(side: list[tuple[int, int, str]]) -> Callable[[psycopg.Connection[Any]], None]:
        def act(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SET deadlock_timeout = '20ms'")
            rows = rng.sample(side, len(side))
            n = len(rows)
            conn.execute(
                Q["job_finish_many"],
                {
                    "worker_id": "w",
                    "ids": [h[0] for h in rows],
                    "attempts": [h[1] for h in rows],
                    "states": [end] * n,
                    "delays": [None] * n,
                    "errors": [None] * n,
                    "results": [None] * n,
                    "runtimes": [1] * n,
                    "claims": [h[2] for h in rows],
                    "progress": None,
                },
            ).fetchall()

        return act

    def rescuing(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET deadlock_timeout = '20ms'")
        conn.execute(Q["job_rescue_expired"], {"restart_grace": 0, "limit": 1000}).fetchall()

    def cancelling(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET deadlock_timeout = '20ms'")
        # Some roots and some dependents of every workflow, as an operator picks them.
        ids = [i for ids in flows for i in rng.sample(ids, 3)]
        conn.execute(Q["job_cancel_many"], {"ids": rng.sample(ids, len(ids))}).fetchall()

    seen = _race(database_url, [finishing(sides[0]), finishing(sides[1]), rescuing, cancelling])
    assert seen == []
    assert _deadlocks(database_url) == before
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Every end was counted once: a pending step waits for exactly its unended upstreams.
        stranded = conn.execute(
            """SELECT j.id FROM unbroken.jobs AS j WHERE j.state = 'pending' AND j.upstream_left
               <> (SELECT count(*) FROM unbroken.job_deps AS d JOIN unbroken.jobs AS u
                   ON u.id = d.depends_on WHERE d.job_id = j.id AND NOT d.resolved
                   AND u.state NOT IN ('succeeded', 'dead', 'cancelled'))"""
        ).fetchall()
        assert stranded == []
