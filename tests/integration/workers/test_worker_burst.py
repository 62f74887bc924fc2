"""`unbroken worker --burst` as a user runs it: it waits for a job due soon (a retry after
its backoff, a short delay) and exits once nothing in its queues is due within
`--burst-wait`; a job scheduled further out does not keep it alive."""

from __future__ import annotations

from pathlib import Path

from apps.harness import Probe, insert_jobs, worker_processes


def test_burst_waits_for_a_retry_due_soon_and_ends_with_it_succeeded(
    probe: Probe, database_url: str, tmp_path: Path
) -> None:
    job_id = insert_jobs(probe, "fail_once")[0]
    with worker_processes(database_url, tmp_path) as start:
        # Polling every 0.2 s, the worker finds its queue empty long before the retry is due.
        worker = start("burst", ("--burst",), poll_interval=0.2)
        code = worker.wait_exit(60)
    log = worker.log()
    assert code == 0, log
    job = probe.job(job_id)
    assert (job["state"], job["attempt"]) == ("succeeded", 2), log
    assert "Traceback" not in log.split("the first attempt fails")[-1], log


def test_burst_does_not_wait_for_a_job_scheduled_beyond_its_horizon(
    probe: Probe, database_url: str, tmp_path: Path
) -> None:
    now = insert_jobs(probe, "record")[0]
    later = insert_jobs(probe, "record")[0]
    probe.rows(
        "UPDATE unbroken.jobs SET state = 'scheduled', run_at = now() + interval '1 hour'"
        " WHERE id = %s",
        [later],
    )
    soon = insert_jobs(probe, "record")[0]
    probe.rows(
        "UPDATE unbroken.jobs SET state = 'scheduled', run_at = now() + interval '2 seconds'"
        " WHERE id = %s",
        [soon],
    )
    with worker_processes(database_url, tmp_path) as start:
        worker = start("burst", ("--burst", "--burst-wait", "30"), poll_interval=0.2)
        code = worker.wait_exit(60)
    log = worker.log()
    assert code == 0, log
    assert (probe.state(now), probe.state(soon), probe.state(later)) == (
        "succeeded",
        "succeeded",
        "scheduled",
    ), log
    assert "burst mode" in log, log
