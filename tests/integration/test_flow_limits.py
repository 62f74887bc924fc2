"""Flow control on a real server: per-key concurrency and rate limits, enforced at fetch.

The first tests call the fetch statement directly on a crafted backlog (which jobs one
fetch claims, in which order); the rest run three worker processes of
tests/apps/limits_app.py, whose `hold` task stamps each run's start and end with the
database's clock in `flow_runs`, and check the limits hold across workers, through a
SIGKILL and a server restart, and that every key's counters end where the rows say.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apps.harness import Probe, StartWorker, wait_until, worker_processes
from pg import Faults
from unbroken import App, migrations
from unbroken.errors import ConfigError, EnqueueError
from unbroken.sql import queries

Q = queries()
APP_REF = "tests.apps.limits_app:app"
FAST = {"lease_seconds": 3.0, "rescue_interval": 1.0, "promote_interval": 0.2, "poll_interval": 0.5}
CUST_LIMIT = 2  # limits_app: app.limit("cust", concurrency=2)
API_RATE = 3  # limits_app: app.limit("api", rate=3, per=1.0)

# Most runs of one key that overlapped in time (a start before another's end).
MOST_AT_ONCE = """
SELECT key, max(n) AS most FROM (
    SELECT a.key, a.id, count(*) AS n FROM flow_runs AS a JOIN flow_runs AS b
      ON a.key = b.key AND b.started_at <= a.started_at
     AND coalesce(b.ended_at, 'infinity') > a.started_at
    GROUP BY a.key, a.id) AS o
GROUP BY key ORDER BY key
"""
# Keys whose counter differs from the running jobs it counts.
DRIFT = """
SELECT k.key, k.running, count(j.id) AS rows FROM unbroken.limit_keys AS k
LEFT JOIN unbroken.jobs AS j ON j.limit_key = k.key AND j.state = 'running'
GROUP BY k.key, k.running HAVING k.running <> count(j.id)
"""


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute(
            "INSERT INTO unbroken.flow_limits (name, concurrency, rate, period)"
            " VALUES ('cust', 2, NULL, NULL), ('api', NULL, 3, 1.0)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS flow_runs (id bigserial PRIMARY KEY, job_id bigint"
            " NOT NULL, key text, pid integer NOT NULL, started_at timestamptz NOT NULL"
            " DEFAULT clock_timestamp(), ended_at timestamptz)"
        )
        yield conn


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    with worker_processes(database_url, tmp_path, APP_REF, **FAST) as start:
        yield start


def enqueue(
    conn: psycopg.Connection[Any],
    task: str,
    keys: list[str | None],
    *,
    priority: int = 0,
    kwargs: dict[str, Any] | None = None,
) -> list[int]:
    n = len(keys)
    rows = conn.execute(
        Q["job_insert_many"],
        {
            "queues": ["default"] * n,
            "tasks": [task] * n,
            "args": [
                json.dumps({"args": [], "kwargs": {**(kwargs or {}), **keyed(k)}}) for k in keys
            ],
            "priorities": [priority] * n,
            "run_ats": [None] * n,
            "max_attempts": [5] * n,
            "unique_keys": [None] * n,
            "limit_keys": keys,
        },
    ).fetchall()
    return [r[0] for r in rows]


def keyed(key: str | None) -> dict[str, str]:
    """`hold` takes its key as an argument; `plain` takes none."""
    return {} if key is None else {"key": key}


def fetch(
    conn: psycopg.Connection[Any], limit: int, worker: str = "w1", *, keyed: bool = True
) -> list[int]:
    rows = conn.execute(
        Q["job_get_available_keyed" if keyed else "job_get_available"],
        {"queues": ["default"], "limit": limit, "worker_id": worker, "lease": 60.0},
    ).fetchall()
    return [r[0] for r in rows]


def finish(conn: psycopg.Connection[Any], job_ids: list[int], worker: str = "w1") -> None:
    held = conn.execute(
        "SELECT id, attempt, attempted_at FROM unbroken.jobs WHERE id = ANY(%s)", [job_ids]
    ).fetchall()
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


# --- one fetch ---------------------------------------------------------------------------------
def test_a_fetch_claims_a_key_up_to_its_limit_and_the_rest_in_priority_order(
    db: psycopg.Connection[Any],
) -> None:
    hot = enqueue(db, "hold", ["cust:1"] * 5, priority=10)
    plain = enqueue(db, "plain", [None] * 3, priority=5)
    other = enqueue(db, "hold", ["cust:2"] * 3, priority=1)
    claimed = fetch(db, limit=6)
    # cust:1's first two (its limit), then every job without a key, then cust:2's first.
    assert claimed == [*hot[:2], *plain, other[0]]
    # Full keys are passed over, not waited on: the next fetch takes cust:2's second job.
    assert fetch(db, limit=6) == [other[1]]
    assert db.execute(DRIFT).fetchall() == []
    finish(db, hot[:1])
    assert fetch(db, limit=6) == [hot[2]]
    assert db.execute(DRIFT).fetchall() == []


def test_the_fetch_of_a_worker_without_limits_leaves_keyed_jobs_alone(
    db: psycopg.Connection[Any],
) -> None:
    keyed = enqueue(db, "hold", ["cust:1"] * 2, priority=10)
    plain = enqueue(db, "plain", [None] * 2)
    assert fetch(db, 10, keyed=False) == plain
    assert fetch(db, 10) == keyed[:CUST_LIMIT]


def test_a_rate_limit_admits_n_claims_per_window(db: psycopg.Connection[Any]) -> None:
    jobs = enqueue(db, "hold", ["api:x"] * 10)
    first = fetch(db, limit=10)
    assert first == jobs[:API_RATE]
    finish(db, first)  # finishing frees no rate: the window's claims stay counted
    assert fetch(db, limit=10) == []
    # The next window (windows of 1 s from the epoch) admits the next three.
    assert wait_until(lambda: fetch(db, limit=10), timeout=5, what="the next window") == jobs[3:6]
    assert db.execute(DRIFT).fetchall() == []


def test_the_keyed_walk_stays_an_index_walk_whatever_the_key_statistics_say(
    db: psycopg.Connection[Any],
) -> None:
    """The fetch's plan is cached generic. Analyzed while every key was full, limit_keys'
    statistics said the walk would find one job at most, and the plan sorted a sequential
    scan of jobs at every fetch (red: 'Seq Scan on jobs'; 10 ms a fetch against 1)."""
    enqueue(db, "hold", [f"cust:{i % 1000}" for i in range(20_000)])
    db.execute("UPDATE unbroken.limit_keys SET closed_until = 'infinity'")
    db.execute("ANALYZE unbroken.limit_keys")
    db.execute("ANALYZE unbroken.jobs")
    db.execute("UPDATE unbroken.limit_keys SET closed_until = NULL")  # open again, unanalyzed
    plans: list[str] = []
    db.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    db.execute("LOAD 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        db.execute(f"SET auto_explain.{setting}")
    db.execute("SET client_min_messages = notice")
    assert len(fetch(db, limit=50)) == 50
    walk = next(p for p in plans if "WITH keyed AS" in p)
    assert "Seq Scan on jobs" not in walk, walk
    assert "jobs_fetch_keyed_idx" in walk, walk


def test_counters_follow_rescues_cancels_and_deletes(db: psycopg.Connection[Any]) -> None:
    jobs = enqueue(db, "hold", ["cust:9"] * 4)
    assert fetch(db, limit=4) == jobs[:2]
    # A lease that ran out: the rescue moves the job back and frees its slot.
    db.execute(
        "UPDATE unbroken.jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
        [jobs[0]],
    )
    rescued = db.execute(Q["job_rescue_expired"], {"restart_grace": 0, "limit": 10}).fetchall()
    assert [r[0] for r in rescued] == [jobs[0]]
    assert db.execute(DRIFT).fetchall() == []
    # A hand edit (an operator's SQL) leaves the count behind; the leader's recount, under
    # the key's lock, sets it to the key's running jobs.
    db.execute("DELETE FROM unbroken.jobs WHERE id = %s", [jobs[1]])
    assert db.execute(DRIFT).fetchall() == [("cust:9", 1, 0)]
    assert fetch(db, limit=4) == [jobs[2]]  # the deleted job's slot still counted
    assert recount(db) == [("cust:9", 2, 1)]
    assert db.execute(DRIFT).fetchall() == []
    assert fetch(db, limit=4) == [jobs[3]]


def recount(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """What the leader's Maintenance.recount_limit_keys runs: returns (key, was, now)."""
    keys = [row[0] for row in db.execute(Q["limit_keys_drifted"]).fetchall()]
    with db.transaction():
        db.execute(Q["limit_keys_lock"], {"keys": keys})
        return db.execute(Q["limit_keys_recount"], {"keys": keys}).fetchall()


# --- declaring and enqueueing ------------------------------------------------------------------
def test_keys_and_limits_are_checked_where_they_are_written(app: App) -> None:
    with pytest.raises(ConfigError, match="needs concurrency="):
        app.limit("none")
    with pytest.raises(ConfigError, match="must not hold ':'"):
        app.limit("a:b", concurrency=1)
    with pytest.raises(ConfigError, match="rate= and per="):
        app.limit("r", rate=3)
    app.limit("tenant", concurrency=1)

    @app.task(name="limited", limit_key=lambda tenant: f"tenant:{tenant}")
    def limited(tenant: int) -> None: ...

    @app.task(name="free")
    def free() -> None: ...

    job = limited.enqueue(7)
    assert app.get_job(job)["limit_key"] == "tenant:7"  # type: ignore[index]
    with pytest.raises(EnqueueError, match="names limit 'tenat', which this app does not declare"):
        free.using(limit_key="tenat:1").enqueue()
    ids = app.enqueue_many([limited.job(1), free.job(), free.using(limit_key="tenant:2").job()])
    keys = [app.get_job(i)["limit_key"] for i in ids]  # type: ignore[index]
    assert keys == ["tenant:1", None, "tenant:2"]


def test_a_workflow_step_keeps_its_limit_key(app: App) -> None:
    app.limit("tenant", concurrency=1)

    @app.task(name="limited", limit_key=lambda tenant: f"tenant:{tenant}")
    def limited(tenant: int) -> None: ...

    wf = app.workflow("keyed")
    first = wf.step(limited.job(1))
    wf.step(limited.using(limit_key="tenant:9").job(2), after=first)
    wf.enqueue()
    keys = [app.get_job(s.job_id)["limit_key"] for s in wf.steps]  # type: ignore[index,arg-type]
    assert keys == ["tenant:1", "tenant:9"]


# --- worker processes --------------------------------------------------------------------------
def wait_all_done(probe: Probe, jobs: list[int], timeout: float) -> None:
    try:
        wait_until(
            lambda: (
                probe.value(
                    "SELECT count(*) FROM unbroken.jobs"
                    " WHERE id = ANY(%s) AND state <> 'succeeded'",
                    [jobs],
                )
                == 0
            ),
            timeout=timeout,
            what=f"{len(jobs)} jobs to succeed",
        )
    except AssertionError as exc:  # say where they stand
        rows = probe.rows(
            "SELECT id, state::text, limit_key, attempt, worker_id, run_at < now() AS due"
            " FROM unbroken.jobs WHERE id = ANY(%s) ORDER BY id",
            [jobs],
        )
        keys = probe.rows("SELECT * FROM unbroken.limit_keys ORDER BY key")
        workers = probe.rows("SELECT id, heartbeat_at FROM unbroken.workers")
        raise AssertionError(f"{exc}\njobs {rows}\nkeys {keys}\nworkers {workers}") from None


def most_running(probe: Probe) -> dict[str, int]:
    rows = probe.rows(
        "SELECT limit_key, count(*) AS n FROM unbroken.jobs WHERE state = 'running'"
        " AND limit_key IS NOT NULL GROUP BY 1"
    )
    return {r["limit_key"]: int(r["n"]) for r in rows}


def test_three_workers_never_run_more_than_the_limit_of_a_key(
    db: psycopg.Connection[Any], probe: Probe, workers: StartWorker
) -> None:
    keys = [f"cust:{i % 4}" for i in range(32)]
    jobs = enqueue(db, "hold", keys, kwargs={"seconds": 0.3})
    jobs += enqueue(db, "plain", [None] * 20)
    procs = [workers(name, concurrency=10) for name in "abc"]
    for proc in procs:
        proc.wait_registered(probe)
    seen: dict[str, int] = {}

    def sampled_done() -> bool:
        for key, n in most_running(probe).items():
            seen[key] = max(seen.get(key, 0), n)
        row = probe.value(
            "SELECT count(*) FROM unbroken.jobs WHERE id = ANY(%s) AND state <> 'succeeded'",
            [jobs],
        )
        return row == 0

    try:
        wait_until(sampled_done, timeout=60, what="every job to succeed", interval=0.01)
    except AssertionError:
        states = probe.rows("SELECT state::text, task, count(*) FROM unbroken.jobs GROUP BY 1, 2")
        raise AssertionError(f"{states}\n{procs[0].log()[-3000:]}") from None
    overlaps = {r["key"]: int(r["most"]) for r in probe.rows(MOST_AT_ONCE)}
    assert set(overlaps) == {f"cust:{i}" for i in range(4)}  # no key starved
    assert max(overlaps.values()) <= CUST_LIMIT, overlaps
    assert max(seen.values()) <= CUST_LIMIT, seen
    assert probe.rows(DRIFT) == []


def test_a_rate_limit_holds_across_three_workers(
    db: psycopg.Connection[Any], probe: Probe, workers: StartWorker
) -> None:
    jobs = enqueue(db, "hold", ["api:x"] * 12, kwargs={"seconds": 0})
    procs = [workers(name, concurrency=5) for name in "abc"]
    for proc in procs:
        proc.wait_registered(probe)
    wait_all_done(probe, jobs, timeout=60)
    per_window = db.execute(
        "SELECT unbroken.limit_window(attempted_at, 1.0), count(*) FROM unbroken.jobs"
        " WHERE id = ANY(%s) GROUP BY 1 ORDER BY 1",
        [jobs],
    ).fetchall()
    windows: list[tuple[datetime, int]] = [(w, n) for w, n in per_window]
    assert max(n for _, n in windows) <= API_RATE, windows
    assert len(windows) >= 12 // API_RATE


def test_a_fetch_that_passed_over_a_locked_key_looks_again_before_the_poll_interval(
    db: psycopg.Connection[Any], database_url: str, probe: Probe, workers: StartWorker
) -> None:
    """A key whose row another transaction holds (another worker's claim or outcome in
    flight) is passed over, SKIP LOCKED: the fetch comes back short although the job is
    still there, and no notification will come for it. The worker must look again soon,
    not after its poll interval (red: the job waited the whole 60 s)."""
    db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")  # to see the fetch ran
    fetches = (
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE"
        " '%job_claim_keyed%' AND dbid = (SELECT oid FROM pg_database"
        " WHERE datname = current_database())"
    )
    jobs = enqueue(db, "hold", ["cust:z"], kwargs={"seconds": 0})
    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1 FROM unbroken.limit_keys WHERE key = 'cust:z' FOR NO KEY UPDATE")
        proc = workers("a", concurrency=5, poll_interval=60.0)
        proc.wait_registered(probe)
        wait_until(lambda: probe.value(fetches), timeout=30, what="the worker's first fetch")
        assert probe.job(jobs[0])["state"] == "available"
        other.rollback()  # the key is free again, and nothing tells the worker
    wait_all_done(probe, jobs, timeout=20)


def test_a_killed_worker_s_slots_are_free_again_after_the_rescue(
    db: psycopg.Connection[Any], probe: Probe, workers: StartWorker
) -> None:
    jobs = enqueue(db, "hold", ["cust:k"] * 2, kwargs={"seconds": 60, "once": True})
    jobs += enqueue(db, "hold", ["cust:k"] * 2, kwargs={"seconds": 0.2})
    a = workers("a", concurrency=10)
    a.wait_registered(probe)
    # Both held runs have begun (recorded their start): their retries then do not sleep.
    wait_until(
        lambda: (
            most_running(probe).get("cust:k") == CUST_LIMIT
            and probe.value("SELECT count(*) FROM flow_runs WHERE job_id = ANY(%s)", [jobs[:2]])
            == 2
        ),
        timeout=30,
        what="worker a to hold the key's two slots",
    )
    a.signal(signal.SIGKILL)
    assert a.wait_exit(10) == -signal.SIGKILL
    b = workers("b", concurrency=10)
    b.wait_registered(probe)
    # The two held jobs are rescued and run again (at once: `once`), then the other two.
    wait_all_done(probe, jobs, timeout=60)
    assert probe.rows(DRIFT) == []
    assert probe.value("SELECT running FROM unbroken.limit_keys WHERE key = 'cust:k'") == 0
    # b ran all four, never more than two at once (a's two runs never ended: left out).
    probe.rows("DELETE FROM flow_runs WHERE pid = %s", [a.pid])
    assert probe.rows(MOST_AT_ONCE) == [{"key": "cust:k", "most": CUST_LIMIT}]


def test_a_server_restart_mid_run_keeps_the_limits(
    db: psycopg.Connection[Any], probe: Probe, workers: StartWorker, faults: Faults
) -> None:
    keys = [f"cust:{i % 3}" for i in range(30)]
    jobs = enqueue(db, "hold", keys, kwargs={"seconds": 0.4})
    procs = [workers(name, concurrency=10) for name in "abc"]
    for proc in procs:
        proc.wait_registered(probe)
    wait_until(
        lambda: probe.value("SELECT count(*) FROM flow_runs") >= 6,
        timeout=30,
        what="the first runs",
    )
    faults.restart("immediate")
    wait_all_done(probe, jobs, timeout=90)
    overlaps = {r["key"]: int(r["most"]) for r in probe.rows(MOST_AT_ONCE)}
    assert max(overlaps.values()) <= CUST_LIMIT, overlaps
    assert probe.rows(DRIFT) == []
