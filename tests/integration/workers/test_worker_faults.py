"""Real worker processes under real faults: SIGKILL, SIGTERM, SIGSTOP/SIGCONT, server restarts.

Workers run `tests.apps.fault_app:app` as subprocesses (`python -m unbroken worker`), with a
3 s lease and a 1 s rescue interval. Their tasks write one row per execution into
`executions`, which is how a test tells which process ran which attempt. Every wait polls
the database (or the process) with a deadline.
"""

from __future__ import annotations

import signal
import time

import pytest

from apps.harness import Probe, StartWorker, WorkerProcess, insert_jobs, wait_until
from pg import Faults, durable_commits

LEASE = 3.0
RESCUE = 1.0
# The bound is lease + rescue interval. The margin covers what sits on top of it here:
# when the killed worker was the leader, another must take over before it can rescue
# anything (one candidate try, 2 s, once the dead leader's session is gone), plus a poll,
# a fetch and a loaded machine.
MARGIN = 6.0
FAST = {
    "lease_seconds": LEASE,
    "rescue_interval": RESCUE,
    "promote_interval": 0.2,
    "poll_interval": 0.5,
}


def started_by(probe: Probe, job_id: int, worker: WorkerProcess) -> bool:
    return any(r["pid"] == worker.pid for r in probe.executions(job_id))


def stop_cleanly(*procs: WorkerProcess) -> None:
    for proc in procs:
        if proc.alive():
            proc.signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait_exit(30) == 0, proc.log()[-3000:]


def test_a_worker_killed_mid_job_has_it_rescued_and_run_by_another(
    probe: Probe, workers: StartWorker
) -> None:
    a = workers("a", **FAST)
    a_id = a.wait_registered(probe)
    [job] = insert_jobs(probe, "record", kwargs={"seconds": 60, "once": True})
    wait_until(lambda: started_by(probe, job, a), timeout=30, what="worker a to start the job")
    b = workers("b", **FAST)
    b.wait_registered(probe)

    killed_at = time.monotonic()
    a.signal(signal.SIGKILL)
    bound = LEASE + RESCUE + MARGIN
    row = probe.wait_state(job, "succeeded", timeout=bound)
    took = time.monotonic() - killed_at

    print(f"succeeded on worker b {took:.1f} s after worker a was killed (bound {bound:g} s)")
    assert took <= bound
    runs = probe.executions(job)
    assert [(r["pid"], r["attempt"]) for r in runs] == [(a.pid, 1), (b.pid, 2)]
    assert row["attempt"] == 2
    assert row["rescues"] == 1
    assert row["result"]["pid"] == b.pid
    [rescued] = row["errors"]
    assert rescued["type"] == "LeaseExpired"
    assert rescued["worker"] == a_id
    assert rescued["attempt"] == 1
    stop_cleanly(b)


def test_sigterm_flushes_what_finished_and_hands_back_what_did_not(
    probe: Probe, workers: StartWorker
) -> None:
    grace = 3.0
    # Outcomes wait up to 10 s in the buffer, so the ones written at all are written by
    # the flush at shutdown; the heartbeat has to keep their leases meanwhile.
    w = workers("w", **FAST, concurrency=8, shutdown_timeout=grace, batch_interval=10)
    w.wait_registered(probe)
    finished = insert_jobs(probe, "record", n=3)
    too_long = insert_jobs(probe, "record", n=2, kwargs={"seconds": 120, "once": True})
    wait_until(
        lambda: all(started_by(probe, j, w) for j in finished + too_long),
        timeout=30,
        what="the jobs to start",
    )
    first_lease = probe.job(finished[0])["lease_expires_at"]
    renewed = wait_until(
        lambda: (row := probe.job(finished[0]))["lease_expires_at"] > first_lease and row,
        timeout=LEASE + 5,
        what="the heartbeat to renew the lease of an outcome waiting in the buffer",
    )
    assert renewed["state"] == "running"  # finished, not yet written: the buffer holds it
    in_grace = insert_jobs(probe, "record", n=2, kwargs={"seconds": 1.5})
    wait_until(
        lambda: all(started_by(probe, j, w) for j in in_grace),
        timeout=30,
        what="the short jobs to start",
    )

    w.signal(signal.SIGTERM)  # the short jobs have 1.5 s to go, the grace is 3 s
    assert w.wait_exit(timeout=grace + 20) == 0

    for job_id in finished + in_grace:
        row = probe.job(job_id)
        assert (row["state"], row["attempt"]) == ("succeeded", 1), row
    for job_id in too_long:
        row = probe.job(job_id)
        # handed back: waiting for someone else, the attempt not spent, nobody holding it
        assert (row["state"], row["attempt"], row["worker_id"]) == ("available", 0, None), row
        assert (row["rescues"], row["errors"]) == (0, [])
    assert probe.value("SELECT count(*) FROM unbroken.jobs WHERE state = 'running'") == 0
    assert probe.value("SELECT count(*) FROM unbroken.workers") == 0  # deregistered
    assert "handing back 2 unfinished jobs" in w.log_flat()

    # Another worker runs the handed-back jobs as their first attempt.
    w2 = workers("w2", **FAST)
    for job_id in too_long:
        row = probe.wait_state(job_id, "succeeded", timeout=30)
        assert row["attempt"] == 1
        assert row["result"]["pid"] == w2.pid
    stop_cleanly(w2)


def test_sigterm_with_every_slot_busy_still_stops_within_the_grace(
    probe: Probe, workers: StartWorker
) -> None:
    """The producer waits for a free slot; a shutdown must not wait for one too."""
    w = workers("w", **FAST, concurrency=2, shutdown_timeout=1)
    w.wait_registered(probe)
    jobs = insert_jobs(probe, "record", n=2, kwargs={"seconds": 120, "once": True})
    wait_until(
        lambda: all(started_by(probe, j, w) for j in jobs), timeout=30, what="both jobs to start"
    )
    w.signal(signal.SIGTERM)
    assert w.wait_exit(timeout=1 + 20) == 0
    for job_id in jobs:
        row = probe.job(job_id)
        assert (row["state"], row["attempt"]) == ("available", 0), row


def test_sigterm_hands_back_a_sync_job_still_running_and_the_process_exits(
    probe: Probe, workers: StartWorker
) -> None:
    """A thread cannot be stopped from outside: the job is handed back, and the process
    must still exit when its grace runs out (the thread dies with it)."""
    w = workers("w", **FAST, shutdown_timeout=1)
    w.wait_registered(probe)
    [job] = insert_jobs(probe, "record_sync", kwargs={"seconds": 120, "once": True})
    wait_until(lambda: started_by(probe, job, w), timeout=30, what="the job to start")

    w.signal(signal.SIGTERM)
    assert w.wait_exit(timeout=1 + 20) == 0
    row = probe.job(job)
    assert (row["state"], row["attempt"], row["worker_id"]) == ("available", 0, None)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_server_restart_during_5000_jobs_loses_none_and_runs_none_twice_per_attempt(
    probe: Probe, workers: StartWorker, faults: Faults, mode: str
) -> None:
    # Without it a crash forgets acknowledged claims, and one attempt number really is
    # handed out twice: unbroken relies on commits staying committed, as PostgreSQL's default.
    durable_commits(probe.url)
    total = 5000
    insert_jobs(probe, "record", n=total, kwargs={"seconds": 0.005})
    a = workers("a", **FAST, concurrency=20)
    b = workers("b", **FAST, concurrency=20)

    def count(where: str) -> int:
        return int(probe.value(f"SELECT count(*) FROM unbroken.jobs WHERE {where}"))

    wait_until(lambda: count("state = 'succeeded'") >= 1000, timeout=120, what="1000 done")
    in_flight = count("state = 'running'")
    faults.restart(mode)  # type: ignore[arg-type]
    wait_until(
        lambda: count("state IN ('succeeded', 'dead', 'cancelled')") == total,
        timeout=180,
        what=f"all {total} jobs final",
    )

    stats = probe.rows(
        "SELECT count(*) FILTER (WHERE attempt > 1) AS retried, sum(rescues) AS rescues,"
        " (SELECT count(*) FROM executions) AS executions FROM unbroken.jobs"
    )[0]
    print(f"{mode} restart with {in_flight} jobs running: {stats}")
    assert in_flight > 0  # the restart hit a run with jobs in the middle of their attempt
    assert count("state = 'succeeded'") == total
    assert count("state = 'running'") == 0
    twice = probe.rows(
        "SELECT job_id, attempt, count(*) AS runs FROM executions"
        " GROUP BY job_id, attempt HAVING count(*) > 1"
    )
    assert twice == []  # no attempt of any job ran twice
    unexplained = probe.value(
        "SELECT count(*) FROM unbroken.jobs AS j WHERE NOT EXISTS ("
        " SELECT 1 FROM executions AS e WHERE e.job_id = j.id AND e.attempt = j.attempt)"
    )
    assert unexplained == 0  # every success is the success of an attempt that ran
    assert faults.idle_in_transaction() == []
    stop_cleanly(a, b)


def test_a_paused_worker_resumed_after_its_job_was_rescued_changes_nothing(
    probe: Probe, workers: StartWorker
) -> None:
    a = workers("a", **FAST)
    a.wait_registered(probe)
    # A sync task: the paused worker's thread finishes its attempt after SIGCONT whatever
    # its heartbeat learns, so the stale outcome is certain to reach the database.
    [job] = insert_jobs(probe, "record_sync", kwargs={"seconds": 5, "once": True})
    wait_until(lambda: started_by(probe, job, a), timeout=30, what="worker a to start the job")
    a.signal(signal.SIGSTOP)
    b = workers("b", **FAST)
    b.wait_registered(probe)

    final = probe.wait_state(job, "succeeded", timeout=LEASE + RESCUE + MARGIN + 10)
    assert (final["attempt"], final["rescues"], final["result"]["pid"]) == (2, 1, b.pid)

    a.signal(signal.SIGCONT)
    wait_until(
        lambda: "not recorded" in a.log_flat(),
        timeout=LEASE + 10,
        what="worker a to try to record its stale outcome",
    )
    assert probe.job(job) == final  # fenced: not one column changed
    runs = probe.executions(job)
    assert [(r["pid"], r["attempt"]) for r in runs] == [(a.pid, 1), (b.pid, 2)]
    stop_cleanly(a, b)
    assert "1 fenced" in a.log_flat()


def test_a_job_handed_back_at_shutdown_wakes_an_idle_worker_at_once(
    probe: Probe, workers: StartWorker
) -> None:
    """The hand-back notifies the queue: an idle worker that polls only once a minute
    starts the job within seconds, not at its next poll."""
    idle = {**FAST, "poll_interval": 60.0}  # only a notification wakes them within a minute
    w1 = workers("w1", **idle, shutdown_timeout=1.0)
    w1.wait_registered(probe)
    (job_id,) = insert_jobs(probe, "record", n=1, kwargs={"seconds": 120, "once": True})
    wait_until(lambda: started_by(probe, job_id, w1), timeout=30, what="w1 to start the job")
    before_w2 = probe.wait_fetching_idle()
    w2 = workers("w2", **idle)
    w2.wait_registered(probe)
    probe.wait_fetching_idle(more_than=before_w2)  # w2 has looked and now waits
    w1.signal(signal.SIGTERM)
    assert w1.wait_exit(timeout=30) == 0
    wait_until(lambda: started_by(probe, job_id, w2), timeout=10, what="w2 to start the job")
    stop_cleanly(w2)


def test_an_outage_longer_than_the_lease_rescues_no_live_workers_job(
    probe: Probe, workers: StartWorker, faults: Faults
) -> None:
    """Every lease runs out while the server is down, yet the running job's worker is
    alive: for one lease after the server is back nothing is rescued, and the worker renews
    first. The job's worker is held (SIGSTOP) until shortly after the server is back, as a
    slow reconnect would hold it, while a fresh worker takes the lead at once: a leader
    that rescued straight away would take the job then."""
    lease = 8.0
    settings = {**FAST, "lease_seconds": lease}
    runner = workers("runner", **settings, queues="slow")
    runner.wait_registered(probe)
    (job_id,) = insert_jobs(probe, "record", queue="slow", kwargs={"seconds": 30})
    wait_until(lambda: started_by(probe, job_id, runner), timeout=30, what="the job to start")

    runner.signal(signal.SIGSTOP)
    faults.stop_for(lease + 2, "fast")  # longer than the lease: every lease has run out
    leader = workers("leader", **settings, queues="elsewhere")
    wait_until(
        lambda: (
            probe.value(
                "SELECT count(*) FROM unbroken.leaders AS l JOIN unbroken.workers AS w"
                " ON w.id = l.holder WHERE l.expires_at > now() AND w.pid = %s",
                [leader.pid],
            )
            == 1
        ),
        timeout=lease - 3,
        what="the new worker to lead",
    )
    time.sleep(2 * RESCUE)  # a leader that rescued at once would have taken the job by now
    runner.signal(signal.SIGCONT)

    row = probe.wait_state(job_id, "succeeded", timeout=60)
    assert (row["attempt"], row["rescues"], row["errors"]) == (1, 0, [])
    assert len(probe.executions(job_id)) == 1
    stop_cleanly(runner, leader)


def test_a_worker_reconnects_within_its_lease_after_a_long_outage(
    probe: Probe, workers: StartWorker, faults: Faults
) -> None:
    """psycopg_pool doubles its reconnect delay with no cap: after an 18 s outage its next
    try would come some 13 s after the server is back, past the rescue grace (one lease),
    and a fresh leader would rescue the live worker's job. The pools end each series of
    tries after a few seconds, so the worker is back and renews first."""
    lease = 8.0
    settings = {**FAST, "lease_seconds": lease}
    runner = workers("runner", **settings, queues="slow")
    runner.wait_registered(probe)
    (job_id,) = insert_jobs(probe, "record", queue="slow", kwargs={"seconds": 32})
    wait_until(lambda: started_by(probe, job_id, runner), timeout=30, what="the job to start")

    faults.stop_for(18, "fast")
    leader = workers("leader", **settings, queues="elsewhere")  # ready to rescue at once

    row = probe.wait_state(job_id, ("succeeded", "retryable", "available"), timeout=60)
    assert (row["state"], row["attempt"], row["rescues"]) == ("succeeded", 1, 0)
    assert len(probe.executions(job_id)) == 1
    stop_cleanly(runner, leader)


def test_a_paused_worker_that_claims_its_rescued_job_again_keeps_the_new_lease(
    probe: Probe, workers: StartWorker
) -> None:
    """The only worker of a queue is paused past its lease; the job is rescued, and after
    SIGCONT the same worker claims it again while its stale attempt still runs (a sync
    task: its thread cannot be stopped). The new attempt must own the job id: when the
    stale attempt ends, the new one keeps renewing and is not rescued a second time."""
    lease = 4.0
    settings = {**FAST, "lease_seconds": lease}
    runner = workers("runner", **settings, queues="slow")
    runner.wait_registered(probe)
    leader = workers("leader", **settings, queues="elsewhere")
    leader.wait_registered(probe)
    (job_id,) = insert_jobs(probe, "record_sync", queue="slow", kwargs={"seconds": 8})
    wait_until(lambda: started_by(probe, job_id, runner), timeout=30, what="the job to start")

    runner.signal(signal.SIGSTOP)
    wait_until(
        lambda: probe.job(job_id)["state"] == "available",
        timeout=lease + 15,
        what="the rescued job to be claimable again",
    )
    runner.signal(signal.SIGCONT)

    row = probe.wait_state(job_id, "succeeded", timeout=60)
    assert (row["attempt"], row["rescues"]) == (2, 1)
    assert [r["attempt"] for r in probe.executions(job_id)] == [1, 2]
    stop_cleanly(runner, leader)
