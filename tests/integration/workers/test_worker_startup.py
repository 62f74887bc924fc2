"""A worker started while its database is down: it waits (UNBROKEN_STARTUP_WAIT), then
either runs or exits 3 with one line; and the migration's own connection is named and
bounded like every other.

Each test stops the session server for real (`faults`); nothing is mocked.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg

from apps.harness import Probe, WorkerProcess, insert_jobs, wait_until, worker_processes
from pg import Faults
from unbroken import App


def test_a_worker_started_while_the_database_is_down_waits_for_it_and_runs(
    probe: Probe, faults: Faults, database_url: str, tmp_path: Path
) -> None:
    job_id = insert_jobs(probe, "record")[0]
    faults.stop_for_in_background(4.0)  # down now, back in 4 s
    with worker_processes(database_url, tmp_path, startup_wait=60) as start:
        worker = start("patient")

        def ran() -> bool:
            assert worker.alive(), f"the worker exited:\n{worker.log()[-3000:]}"
            return bool(probe.state(job_id) == "succeeded")

        wait_until(ran, timeout=60, what="the job to succeed once the server is back")
        assert "Traceback" not in worker.log(), worker.log()
        assert "database not reachable" in worker.log_flat()  # it said it was waiting
        assert worker.stop() == 0, worker.log()[-3000:]


def test_a_worker_whose_database_stays_down_exits_3_with_one_line(
    probe: Probe, faults: Faults, database_url: str, tmp_path: Path
) -> None:
    faults.stop()
    with worker_processes(database_url, tmp_path, startup_wait=2) as start:
        worker: WorkerProcess = start("impatient")
        code = worker.wait_exit(60)
    log = worker.log()
    assert code == 3, log
    assert "Traceback" not in log, log
    final = [line for line in log.splitlines() if "database not reachable after" in line]
    assert len(final) == 1, log
    assert "host 127.0.0.1" in final[0], final


def test_the_migration_connection_is_named_like_every_other(database_url: str) -> None:
    """Hold the migrations' advisory lock so App.migrate() waits on it, and look at the
    waiting session from outside: it carries unbroken's application_name."""
    app = App(database_url=database_url, application_name="startup-test")
    done: list[object] = []
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('unbroken:unbroken'))")
        thread = threading.Thread(target=lambda: done.append(app.migrate()), daemon=True)
        thread.start()
        with psycopg.connect(database_url, autocommit=True) as watcher:
            names = wait_until(
                lambda: [
                    row[0]
                    for row in watcher.execute(
                        "SELECT application_name FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ],
                timeout=30,
                what="App.migrate() to wait on the migrations' lock",
            )
        assert names == ["startup-test:migrate"]
        holder.rollback()
    thread.join(30)
    assert done, "the migration did not finish after the lock was released"
    assert done[0], "the migration applied nothing"
    app.close()
