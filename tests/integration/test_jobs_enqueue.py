"""Getting jobs in and out of line: unique keys, pausing a queue, priorities, refused
enqueues (nothing written), and enqueueing inside the caller's own transaction."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import psycopg
import pytest

from apps.harness import Probe, running_worker, wait_until
from unbroken import App, EnqueueError


def job_count(probe: Probe) -> int:
    return int(probe.value("SELECT count(*) FROM unbroken.jobs"))


def test_a_unique_job_returns_the_live_one_until_it_is_finished(app: App, probe: Probe) -> None:
    release = threading.Event()

    @app.task(name="sync_report", unique=True)
    async def sync_report(repo: str) -> None:
        await asyncio.to_thread(release.wait, 30)

    first = sync_report.enqueue("a")
    assert sync_report.enqueue("a") == first  # waiting: the same job
    other = sync_report.enqueue("b")
    assert other != first
    keyed = sync_report.using(unique_key="manual").enqueue("c")
    assert sync_report.using(unique_key="manual").enqueue("d") == keyed
    with running_worker(app):
        probe.wait_state(first, "running", timeout=10)
        assert sync_report.enqueue("a") == first  # running: still the same job
        release.set()
        probe.wait_state(first, "succeeded", timeout=10)
        again = sync_report.enqueue("a")  # finished: a new job
        assert again != first
        probe.wait_state(again, "succeeded", timeout=10)
    assert job_count(probe) == 4


def test_a_paused_queue_is_not_fetched_from_and_loses_nothing(app: App, probe: Probe) -> None:
    ran: list[str] = []

    @app.task(name="work", queue="bulk")
    async def work(n: int) -> None:
        ran.append(f"bulk {n}")

    @app.task(name="marker", queue="other")
    async def marker() -> None:
        ran.append("marker")

    app.pause_queue("bulk")
    with running_worker(app, queues="bulk,other", concurrency=10):
        held = [work.enqueue(n) for n in range(5)]
        # The marker is enqueued after the bulk jobs, and one fetch would have claimed
        # them all (10 free slots): that it ran and they did not is the pause at work.
        probe.wait_state(marker.enqueue(), "succeeded", timeout=10)
        for job in held:
            row = probe.job(job)
            assert (row["state"], row["attempt"]) == ("available", 0)
        assert ran == ["marker"]
        app.resume_queue("bulk")
        for job in held:
            probe.wait_state(job, "succeeded", timeout=10)
    assert sorted(ran) == ["bulk 0", "bulk 1", "bulk 2", "bulk 3", "bulk 4", "marker"]


def test_larger_priority_runs_first(app: App, probe: Probe) -> None:
    order: list[str] = []

    # The priority may be a function of the arguments; a per-call priority overrides it.
    @app.task(name="prio", priority=lambda name, p: p)
    async def prio(name: str, p: int) -> None:
        order.append(name)

    app.pause_queue("default")
    for name, p in (("zero", 0), ("five", 5), ("minus three", -3), ("five again", 5)):
        prio.enqueue(name, p)
    prio.using(priority=10).enqueue("ten by override", -100)
    with running_worker(app, concurrency=1):
        app.resume_queue("default")
        wait_until(lambda: len(order) == 5, timeout=10, what="all five to run")
    assert order == ["ten by override", "five", "five again", "zero", "minus three"]


def test_refused_enqueues_write_nothing(app: App, probe: Probe) -> None:
    @app.task(name="takes_data")
    async def takes_data(data: Any) -> None:
        return None

    with pytest.raises(EnqueueError, match="cannot be serialised"):
        takes_data.enqueue({1, 2})
    with pytest.raises(EnqueueError, match="cannot be serialised"):
        takes_data.enqueue(math.nan)
    with pytest.raises(EnqueueError, match="over the limit"):
        takes_data.enqueue("x" * 2000)
    with pytest.raises(EnqueueError, match="do not fit its signature"):
        takes_data.enqueue(1, 2)  # type: ignore[call-arg]
    # A batch with one bad job is refused whole, before a byte is written.
    with pytest.raises(EnqueueError):
        app.enqueue_many([takes_data.job(1), takes_data.job(object()), takes_data.job(3)])
    assert job_count(probe) == 0
    takes_data.enqueue("fits")
    assert job_count(probe) == 1


@pytest.mark.parametrize("how", ["one", "many"])
def test_an_enqueue_in_the_callers_transaction_lives_and_dies_with_it(
    app: App, probe: Probe, database_url: str, how: str
) -> None:
    ran: list[str] = []

    @app.task(name="welcome")
    async def welcome(who: str) -> None:
        ran.append(who)

    def enqueue(conn: psycopg.Connection[Any], who: str) -> None:
        if how == "one":
            welcome.using(conn=conn).enqueue(who)
        else:
            app.enqueue_many([welcome.job(who), welcome.job(who)], conn=conn)

    with running_worker(app):
        with psycopg.connect(database_url) as conn:  # not autocommit: one transaction
            conn.execute("SELECT 1")
            enqueue(conn, "rolled back")
            assert job_count(probe) == 0  # invisible outside the transaction
            conn.rollback()
        with psycopg.connect(database_url) as conn:
            enqueue(conn, "committed")
            assert job_count(probe) == 0
            marker = welcome.enqueue("marker")  # the worker runs what it can see ...
            probe.wait_state(marker, "succeeded", timeout=10)
            assert ran == ["marker"]  # ... which is not the uncommitted job
            conn.commit()
        expected = 1 if how == "one" else 2
        wait_until(lambda: ran.count("committed") == expected, timeout=10, what="the job to run")
    assert "rolled back" not in ran
    assert job_count(probe) == 1 + expected


@pytest.mark.parametrize("scheduled", [False, True], ids=["all-now", "some-later"])
def test_a_bulk_enqueue_writes_every_job_as_made(app: App, probe: Probe, scheduled: bool) -> None:
    """Across several COPY pieces, with the awkward characters COPY text must escape; with
    every job due now (the short column list) and with some for later (the full one)."""

    @app.task(name="awkward")
    async def awkward(n: int, text: str) -> None:
        return None

    texts = ["back\\slash", "tab\there", "new\nline", 'quote"', "naïve ☃", "\\N", ""]
    count = 2 * 1000 + 7  # three pieces of COPY data
    specs = []
    for n in range(count):
        task = awkward.using(delay=3600) if scheduled and n % 3 == 0 else awkward
        specs.append(task.job(n, texts[n % len(texts)]))
    ids = app.enqueue_many(specs)
    assert len(ids) == len(set(ids)) == count
    rows = probe.rows(
        "SELECT id, args, state::text AS state, run_at > now() + interval '30 minutes' AS later "
        "FROM unbroken.jobs ORDER BY id"
    )
    assert [r["id"] for r in rows] == sorted(ids)
    by_id = {r["id"]: r for r in rows}
    for n, job_id in enumerate(ids):
        args, state, later = (by_id[job_id][k] for k in ("args", "state", "later"))
        assert args == {"args": [n, texts[n % len(texts)]], "kwargs": {}}
        expect_later = scheduled and n % 3 == 0
        assert (state, later) == (("scheduled", True) if expect_later else ("available", False))
