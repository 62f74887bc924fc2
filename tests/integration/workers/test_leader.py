"""Leadership: a dead leader is replaced as soon as its session is gone, a frozen one when
its term runs out, and maintenance (promotion, rescue) goes on under the new leader.

The process tests run real workers (`tests.apps.fault_app:app`) and SIGKILL or SIGSTOP the
one that holds the `leaders` row. Whether a takeover was decided by the dead leader's
session or by its term is read from the server's own clock: the probe notes `now()` in the
statement where it first sees the new holder, which is never earlier than the takeover, and
compares it with the term the dead leader had renewed last. No test measures how long a
takeover takes: bench/takeover.py does.
"""

from __future__ import annotations

import secrets
import signal
from typing import Any

import psycopg
import pytest

from apps.harness import (
    Probe,
    StartWorker,
    WorkerProcess,
    insert_jobs,
    wait_until,
)
from unbroken import migrations
from unbroken.sql import queries

# The lease is long enough that the term (min(8 s, lease)) clearly outlasts a takeover by
# session, short enough that the killed leader's job is rescued within the test.
SETTINGS = {
    "lease_seconds": 8.0,
    "rescue_interval": 1.0,
    "promote_interval": 0.2,
    "poll_interval": 0.5,
}
NAME = "maintenance"


def leader_row(probe: Probe) -> dict[str, Any] | None:
    rows = probe.rows(
        "SELECT l.holder, l.expires_at, l.lock_key, now() AS seen_at, w.pid"
        " FROM unbroken.leaders AS l LEFT JOIN unbroken.workers AS w ON w.id = l.holder"
        " WHERE l.name = %s",
        [NAME],
    )
    return rows[0] if rows else None


def leader(probe: Probe) -> dict[str, Any]:
    row = leader_row(probe)
    assert row is not None, "nobody leads"
    return row


def wait_leader(probe: Probe, among: list[WorkerProcess], timeout: float = 30) -> dict[str, Any]:
    """The leaders row once one of `among` holds it (the first time the probe sees it)."""
    pids = {w.pid for w in among}

    def led() -> dict[str, Any] | None:
        row = leader_row(probe)
        return row if row is not None and row["pid"] in pids else None

    return wait_until(led, timeout=timeout, what=f"one of {[w.name for w in among]} to lead")


def ran_on(probe: Probe, job_id: int) -> set[int]:
    return {r["pid"] for r in probe.executions(job_id)}


def stop_cleanly(*procs: WorkerProcess) -> None:
    for proc in procs:
        if proc.alive():
            proc.signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait_exit(30) == 0, proc.log()[-3000:]


def insert_scheduled(probe: Probe, seconds: float) -> int:
    """A job due `seconds` from now: only a leader's promotion makes it available."""
    params = {
        "queues": ["default"],
        "tasks": ["record"],
        "args": ['{"args": [], "kwargs": {}}'],
        "priorities": [0],
        "run_ats": [probe.value("SELECT now() + make_interval(secs => %s)", [seconds])],
        "max_attempts": [5],
        "unique_keys": [None],
        "limit_keys": [None],
    }
    [row] = probe.rows(queries()["job_insert_many"], params)
    assert probe.state(row["id"]) == "scheduled"
    return int(row["id"])


def test_a_killed_leader_is_replaced_before_its_term_runs_out_and_maintenance_goes_on(
    probe: Probe, workers: StartWorker
) -> None:
    a = workers("a", **SETTINGS)
    a.wait_registered(probe)
    wait_leader(probe, [a])
    # The leader runs a job, so its death leaves a lease for the next leader to rescue.
    [running] = insert_jobs(probe, "record", kwargs={"seconds": 120, "once": True})
    wait_until(lambda: a.pid in ran_on(probe, running), timeout=30, what="a to start the job")
    b = workers("b", **SETTINGS)
    c = workers("c", **SETTINGS)
    b.wait_registered(probe)
    c.wait_registered(probe)

    dead = leader(probe)
    assert dead["pid"] == a.pid
    # Named from a's first term on: its elector starts once its listener holds the lock.
    assert dead["lock_key"] is not None
    a.signal(signal.SIGKILL)
    a.wait_exit(30)
    # A deadline far past the term: a takeover decided by the term alone is seen too, and
    # then fails the assertion below rather than the wait.
    new = wait_leader(probe, [b, c], timeout=60)
    assert new["seen_at"] < dead["expires_at"], (
        f"the new leader was seen at {new['seen_at']}, only after the killed leader's term "
        f"ran out at {dead['expires_at']}: the takeover waited for the term "
        f"(its row named lock {dead['lock_key']})\n{b.log()[-2000:]}\n{c.log()[-2000:]}"
    )

    # Promotion goes on: a job scheduled after the kill becomes available and runs.
    scheduled = insert_scheduled(probe, 1.0)
    done = probe.wait_state(scheduled, "succeeded", timeout=30)
    assert done["result"]["pid"] in (b.pid, c.pid)
    # Rescue goes on: the killed leader's job is rescued once its lease runs out, and runs.
    rescued = probe.wait_state(running, "succeeded", timeout=60)
    assert (rescued["attempt"], rescued["rescues"]) == (2, 1)
    assert rescued["errors"][0]["worker"] == a.worker_id
    assert rescued["result"]["pid"] in (b.pid, c.pid)
    stop_cleanly(b, c)


def test_a_frozen_leader_keeps_its_session_and_is_replaced_when_its_term_runs_out(
    probe: Probe, workers: StartWorker
) -> None:
    a = workers("a", **SETTINGS)
    a.wait_registered(probe)
    wait_leader(probe, [a])
    b = workers("b", **SETTINGS)
    b.wait_registered(probe)

    a.signal(signal.SIGSTOP)  # alive, sessions open, nothing renewed
    frozen = leader(probe)
    assert frozen["pid"] == a.pid
    new = wait_leader(probe, [b], timeout=60)
    assert new["seen_at"] >= frozen["expires_at"]  # the term decided, not the session

    a.signal(signal.SIGCONT)  # the old leader learns it lost, and does not take it back
    wait_until(
        lambda: "lost leadership" in a.log_flat(),
        timeout=30,
        what="the resumed worker to step down",
    )
    row = leader(probe)
    assert row["pid"] == b.pid
    # b keeps it: its renewals go on while a, now a candidate, leaves the term alone.
    renewed = wait_until(
        lambda: (r := leader_row(probe)) is not None and r["expires_at"] > row["expires_at"] and r,
        timeout=30,
        what="b to renew its term",
    )
    assert renewed["pid"] == b.pid
    stop_cleanly(a, b)


def test_without_a_listener_a_killed_leader_is_replaced_when_its_term_runs_out(
    probe: Probe, workers: StartWorker
) -> None:
    """listen off (as with PgBouncer in transaction mode): no session marks the leader
    alive, so its term alone decides."""
    a = workers("a", **SETTINGS, listen=False)
    a.wait_registered(probe)
    wait_leader(probe, [a])
    b = workers("b", **SETTINGS, listen=False)
    b.wait_registered(probe)
    dead = leader(probe)
    assert dead["pid"] == a.pid
    a.signal(signal.SIGKILL)
    a.wait_exit(30)
    new = wait_leader(probe, [b], timeout=60)
    assert new["seen_at"] >= dead["expires_at"]
    stop_cleanly(b)


# --- the statement itself, without workers ------------------------------------------------------
def elect(conn: psycopg.Connection[Any], holder: str, lock_key: int | None, ttl: float) -> bool:
    params = {"name": NAME, "holder": holder, "ttl": ttl, "lock_key": lock_key}
    return conn.execute(queries()["leader_attempt_elect"], params).fetchone() is not None


def test_a_candidates_attempt_against_a_live_leader_writes_and_locks_nothing(
    database_url: str, probe: Probe
) -> None:
    """Candidates try every 2 s: an attempt that finds a live leader must be a read, not a
    row lock (which takes a transaction id and writes WAL)."""
    key = secrets.randbits(62)
    with (
        psycopg.connect(database_url, autocommit=True) as session,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        assert session.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone() == (True,)
        assert elect(conn, "leader", key, 30)
        before = probe.rows("SELECT xmin::text, xmax::text FROM unbroken.leaders")
        assert before[0]["xmax"] == "0"
        for _ in range(3):
            assert not elect(conn, "candidate", None, 30)
        assert probe.rows("SELECT xmin::text, xmax::text FROM unbroken.leaders") == before


@pytest.mark.usefixtures("probe")  # migrated
def test_the_term_is_taken_when_the_session_is_gone_and_not_before(database_url: str) -> None:
    key = secrets.randbits(62)
    with psycopg.connect(database_url, autocommit=True) as conn:
        with psycopg.connect(database_url, autocommit=True) as session:
            session.execute("SELECT pg_try_advisory_lock(%s)", [key])
            assert elect(conn, "leader", key, 300)
            assert not elect(conn, "candidate", None, 300)
            assert elect(conn, "leader", key, 300)  # the holder renews
        # the leader's process died: its session ends, the lock with it
        wait_until(
            lambda: elect(conn, "candidate", None, 300),
            timeout=10,
            what="the candidate to take a term of 300 s whose holder's session ended",
        )
        assert not elect(conn, "leader", key, 300)  # the old holder does not get it back


@pytest.mark.usefixtures("probe")  # migrated
def test_a_leader_without_a_session_keeps_its_term_until_it_runs_out(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert elect(conn, "leader", None, 300)
        assert not elect(conn, "candidate", None, 300)
        conn.execute("UPDATE unbroken.leaders SET expires_at = now() - interval '1 ms'")
        assert elect(conn, "candidate", None, 300)
        row = conn.execute("SELECT holder, expires_at > now() FROM unbroken.leaders").fetchone()
        assert row == ("candidate", True)


@pytest.mark.usefixtures("probe")  # migrated
def test_a_key_not_held_in_this_database_does_not_count(database_url: str, pg_server: Any) -> None:
    """Advisory locks are per database: the same key held in another database says nothing
    about the leader of this one."""
    key = secrets.randbits(62)
    other = pg_server.create_database()
    try:
        with (
            psycopg.connect(other, autocommit=True) as elsewhere,
            psycopg.connect(database_url, autocommit=True) as conn,
        ):
            elsewhere.execute("SELECT pg_try_advisory_lock(%s)", [key])
            assert elect(conn, "leader", key, 300)
            assert elect(conn, "candidate", None, 300)
    finally:
        pg_server.drop_database(other)


def test_maintenance_ticks_as_often_as_asked_between_term_renewals(database_url: str) -> None:
    """A promote interval of 0.5 s (the default) must not wait for the once-a-second term
    renewal: the leader ticks at its own pace and renews the term less often."""
    import asyncio

    from unbroken.db._async.pool import AsyncRolePool
    from unbroken.runtime.elector import Elector
    from unbroken.settings import Settings

    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
    renewals_before_ticks: list[int] = []

    async def scenario() -> None:
        settings = Settings(database_url=database_url)
        async with AsyncRolePool("worker", database_url, settings) as pool:
            elector = Elector(pool, queries(), "tick-test", term_seconds=8.0)
            original = elector.attempt
            attempts = 0

            async def counted() -> bool:
                nonlocal attempts
                attempts += 1
                return await original()

            elector.attempt = counted  # type: ignore[method-assign]
            ticks = 0
            enough = asyncio.Event()

            async def tick() -> None:
                nonlocal ticks
                ticks += 1
                if ticks >= 12:
                    renewals_before_ticks.append(attempts)
                    enough.set()

            running = asyncio.create_task(elector.run(tick, tick_every=0.1))
            await asyncio.wait_for(enough.wait(), 60)
            running.cancel()

    asyncio.run(scenario())
    # Twelve ticks at 0.1 s take about 1.1 s: two or three renewals, never one per tick.
    assert renewals_before_ticks
    assert renewals_before_ticks[0] <= 6
