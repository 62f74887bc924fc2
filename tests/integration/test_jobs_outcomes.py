"""What each way an attempt can end does to the job, with a real worker in this process.

Permanent error, snooze, timeouts (async and sync), retries with backoff, attempts
exhausted, cancellation of a waiting job and of a running one (an unknown task:
test_unknown_task.py). The worker runs in a thread (`app.worker(handle_signals=False)`);
every wait polls the database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime

import pytest

import unbroken
from apps.harness import Probe, running_worker, wait_until
from unbroken import App, JobCancelled, Permanent, Snooze, current_job


def test_permanent_goes_dead_at_once_whatever_attempts_are_left(app: App, probe: Probe) -> None:
    @app.task(name="bad_input", max_attempts=5)
    async def bad_input() -> None:
        raise Permanent("the input can never work")

    @app.task(name="classified", max_attempts=5, permanent=[KeyError])
    def classified() -> None:
        raise KeyError("missing")

    ids = [bad_input.enqueue(), classified.enqueue()]
    with running_worker(app):
        rows = [probe.wait_state(i, "dead", timeout=10) for i in ids]
    for row, kind in zip(rows, ["Permanent", "KeyError"], strict=True):
        assert row["attempt"] == 1
        [error] = row["errors"]
        assert (error["type"], error["kind"]) == (kind, "permanent")


def test_snooze_reschedules_without_spending_an_attempt(app: App, probe: Probe) -> None:
    runs: list[int] = []

    @app.task(name="not_yet", max_attempts=1)
    async def not_yet() -> str:
        runs.append(current_job().attempt)
        if len(runs) == 1:
            raise Snooze(3600)
        return "done"

    job = not_yet.enqueue()
    with running_worker(app):
        snoozed = probe.wait_state(job, "scheduled", timeout=10)
        assert snoozed["attempt"] == 0  # given back: max_attempts=1 and it may still run
        assert snoozed["errors"] == []
        assert (snoozed["run_at"] - snoozed["attempted_at"]).total_seconds() > 3500
        probe.rows("UPDATE unbroken.jobs SET run_at = now() WHERE id = %s", [job])  # time passes
        done = probe.wait_state(job, "succeeded", timeout=10)
    assert runs == [1, 1]
    assert (done["attempt"], done["result"]) == (1, "done")


def test_an_async_attempt_over_its_timeout_is_cancelled(app: App, probe: Probe) -> None:
    cancelled = threading.Event()

    @app.task(name="slow_async", timeout=0.3, max_attempts=1)
    async def slow_async() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = slow_async.enqueue()
    with running_worker(app):
        row = probe.wait_state(job, "dead", timeout=10)
    assert cancelled.is_set()
    [error] = row["errors"]
    assert (error["type"], error["kind"]) == ("Timeout", "timeout")
    assert "0.3 s" in error["message"]


def test_a_sync_attempt_over_its_timeout_frees_its_slot(app: App, probe: Probe) -> None:
    release = threading.Event()

    @app.task(name="stuck_sync", timeout=0.3, max_attempts=1)
    def stuck_sync() -> None:
        release.wait(60)  # a thread cannot be stopped from outside: it keeps waiting

    @app.task(name="quick")
    def quick() -> str:
        return "ran"

    stuck = stuck_sync.enqueue()
    with running_worker(app, concurrency=1):
        row = probe.wait_state(stuck, "dead", timeout=10)
        after = quick.enqueue()
        # The one slot is free again although the timed-out thread still waits.
        probe.wait_state(after, "succeeded", timeout=10)
        assert not release.is_set()
        release.set()
    [error] = row["errors"]
    assert (error["type"], error["kind"]) == ("Timeout", "timeout")


def test_a_timeout_error_raised_by_the_task_itself_is_an_ordinary_failure(
    app: App, probe: Probe
) -> None:
    """TimeoutError from task code (a socket, an HTTP client) with no task timeout set."""

    @app.task(name="upstream_timeout", max_attempts=1)
    async def upstream_timeout() -> None:
        raise TimeoutError("the upstream API did not answer")

    job = upstream_timeout.enqueue()
    with running_worker(app):
        row = probe.wait_state(job, "dead", timeout=10)
    assert row["rescues"] == 0  # recorded by the worker, not left running for the rescuer
    [error] = row["errors"]
    assert error["type"] == "TimeoutError"
    assert "the upstream API did not answer" in error["message"]


def test_retries_back_off_and_every_attempt_keeps_its_error(app: App, probe: Probe) -> None:
    started: list[float] = []

    @app.task(
        name="flaky",
        max_attempts=3,
        retry=unbroken.Retry(base=0.4, cap=10.0, multiplier=2.0, jitter=0.0),
    )
    async def flaky() -> None:
        started.append(time.monotonic())
        raise RuntimeError(f"boom on attempt {current_job().attempt}")

    job = flaky.enqueue()
    with running_worker(app) as worker:
        first = probe.wait_state(job, "retryable", timeout=10)
        row = probe.wait_state(job, "dead", timeout=20)
    # The backoff is stored in the row, not slept in a slot.
    [error] = first["errors"]
    waited = (first["run_at"] - datetime.fromisoformat(error["at"])).total_seconds()
    assert 0.3 <= waited <= 1.0
    # Attempts 1, 2, 3 were 0.4 s, then 0.8 s apart (at least; jitter is 0).
    assert len(started) == 3
    assert started[1] - started[0] >= 0.4
    assert started[2] - started[1] >= 0.8
    assert (row["attempt"], row["max_attempts"]) == (3, 3)
    assert row["finished_at"] is not None
    assert [e["attempt"] for e in row["errors"]] == [1, 2, 3]
    for n, e in enumerate(row["errors"], start=1):
        assert e["type"] == "RuntimeError"
        assert e["message"] == f"boom on attempt {n}"
        assert "RuntimeError: boom on attempt" in e["traceback"]
        assert e["worker"] == worker.worker_id
        assert datetime.fromisoformat(e["at"]) <= row["finished_at"]


def test_cancelling_a_waiting_job_means_it_never_runs(app: App, probe: Probe) -> None:
    runs: list[int] = []

    @app.task(name="later")
    async def later(n: int) -> None:
        runs.append(n)

    scheduled = later.using(delay=3600).enqueue(1)
    app.pause_queue("default")
    available = later.enqueue(2)
    assert app.cancel(scheduled, available) == {scheduled: "cancelled", available: "cancelled"}
    app.resume_queue("default")
    with running_worker(app):
        marker = later.enqueue(3)
        probe.wait_state(marker, "succeeded", timeout=10)
    assert runs == [3]
    for job in (scheduled, available):
        row = probe.job(job)
        assert (row["state"], row["attempt"]) == ("cancelled", 0)
        assert row["finished_at"] is not None


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_running_job_sees_a_cancel_request_and_stops(app: App, probe: Probe, kind: str) -> None:
    started = threading.Event()

    @app.task(name="loop_async")
    async def loop_async() -> None:
        started.set()
        for _ in range(600):
            current_job().check()
            await asyncio.sleep(0.05)

    @app.task(name="loop_sync")
    def loop_sync() -> None:
        started.set()
        for _ in range(600):
            current_job().check()
            time.sleep(0.05)

    task = loop_async if kind == "async" else loop_sync
    with running_worker(app):
        job = task.enqueue()
        wait_until(started.is_set, timeout=10, what="the job to start")
        assert app.cancel(job) == {job: "running"}  # asked, not forced
        row = probe.wait_state(job, "cancelled", timeout=10)
    assert row["attempt"] == 1
    [error] = row["errors"]
    assert (error["type"], error["kind"]) == (JobCancelled.__qualname__, "cancelled")


def test_a_cancelled_job_that_fails_instead_of_stopping_is_not_retried(
    app: App, probe: Probe
) -> None:
    runs: list[int] = []

    @app.task(name="ignores_cancel", max_attempts=5)
    def ignores_cancel() -> None:
        job = current_job()
        runs.append(job.attempt)
        wait_until(lambda: job.cancel_requested, timeout=10, what="the cancel request")
        raise RuntimeError("cleanup failed on the way out")  # never calls check()

    with running_worker(app):
        job = ignores_cancel.enqueue()
        wait_until(lambda: runs, timeout=10, what="the job to start")
        app.cancel(job)
        row = probe.wait_state(job, ("cancelled", "retryable", "dead"), timeout=10)
    assert row["state"] == "cancelled"
    assert runs == [1]


def test_a_retried_dead_job_wakes_an_idle_worker_at_once(app: App, probe: Probe) -> None:
    """`retry` notifies the job's queue: a worker that polls once a minute runs it in seconds."""
    runs: list[int] = []

    @app.task(name="flaky_once", max_attempts=1)
    async def flaky_once() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first time fails")

    job_id = flaky_once.enqueue()
    with running_worker(app, poll_interval=60.0):
        probe.wait_state(job_id, "dead", timeout=10)
        probe.wait_fetching_idle()  # from now on only a notification (or a minute) wakes it
        assert app.retry(job_id) == [job_id]
        row = probe.wait_state(job_id, "succeeded", timeout=10)
    assert (row["attempt"], len(runs)) == (2, 2)
