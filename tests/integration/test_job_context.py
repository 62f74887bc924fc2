"""The in-job API on a real server: `current_job().transaction()` / `atransaction()` and
`current_job().progress()` (batched with heartbeats, fenced by the claim, visible to
`unbroken jobs watch` and the dashboard, surviving a SIGKILL of its worker)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from apps.harness import Probe, insert_jobs, running_worker, wait_until, worker_processes
from cli_support import cli
from unbroken import App, current_job
from unbroken.dashboard import create_app
from unbroken.errors import UnbrokenError
from unbroken.settings import load_settings
from unbroken.sql import queries

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

Q = queries()
NOTES = "CREATE TABLE IF NOT EXISTS public.notes (job bigint, note text)"


def _notes(probe: Probe) -> list[tuple[int, str]]:
    return [(r["job"], r["note"]) for r in probe.rows("SELECT * FROM notes ORDER BY note")]


# --- transactions ------------------------------------------------------------------------------
def test_a_task_transaction_commits_on_exit_and_rolls_back_on_error(app: App, probe: Probe) -> None:
    probe.rows(NOTES)

    @app.task(name="note_sync", max_attempts=1)
    def note_sync(note: str, fail: bool) -> dict[str, Any]:
        ctx = current_job()
        with ctx.transaction() as conn:
            conn.execute("INSERT INTO notes VALUES (%s, %s)", [ctx.job_id, note])
            seen = conn.execute(
                "SELECT current_setting('application_name'),"
                " (SELECT setting FROM pg_settings WHERE name = 'statement_timeout'),"
                " pg_current_xact_id_if_assigned() IS NOT NULL"
            ).fetchone()
            if fail:
                raise RuntimeError("roll it back")
        assert seen is not None
        return {"app": seen[0], "timeout": seen[1], "in_transaction": seen[2]}

    @app.task(name="note_async", max_attempts=1)
    async def note_async(note: str, fail: bool) -> str:
        ctx = current_job()
        async with ctx.atransaction() as conn:
            await conn.execute("INSERT INTO notes VALUES (%s, %s)", [ctx.job_id, note])
            if fail:
                raise RuntimeError("roll it back")
        return note

    jobs = {
        "sync kept": note_sync.enqueue("sync kept", False),
        "sync lost": note_sync.enqueue("sync lost", True),
        "async kept": note_async.enqueue("async kept", False),
        "async lost": note_async.enqueue("async lost", True),
    }
    with running_worker(app):
        rows = {n: probe.wait_state(j, ("succeeded", "dead"), timeout=30) for n, j in jobs.items()}
        # Returned clean: no session of the tasks pool stays inside a transaction.
        assert (
            probe.value(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%:tasks'"
                " AND state <> 'idle'"
            )
            == 0
        )
    assert {n: r["state"] for n, r in rows.items()} == {
        "sync kept": "succeeded",
        "sync lost": "dead",
        "async kept": "succeeded",
        "async lost": "dead",
    }
    assert _notes(probe) == [(jobs["async kept"], "async kept"), (jobs["sync kept"], "sync kept")]
    # The tasks pool's own sessions, in a transaction, with the statement timeout applied.
    assert rows["sync kept"]["result"] == {
        "app": "unbroken:tasks",
        "timeout": str(int(app.settings.statement_timeout * 1000)),
        "in_transaction": True,
    }


def test_task_transactions_waiting_for_their_pool_never_delay_heartbeats(
    app: App, probe: Probe
) -> None:
    """One connection in the tasks pool, two jobs that each hold it longer than a lease:
    the second waits for it while both leases are renewed (nobody is rescued)."""
    hold = app.settings.lease_seconds * 1.5

    @app.task(name="hold_conn", max_attempts=1)
    async def hold_conn() -> None:
        async with current_job().atransaction() as conn:
            await conn.execute("SELECT pg_sleep(%s)", [hold])

    jobs = [hold_conn.enqueue() for _ in range(2)]
    with running_worker(app, pool_max_size=1, pool_acquire_timeout=hold * 4):
        rows = [probe.wait_state(j, ("succeeded", "dead"), timeout=60) for j in jobs]
    assert [(r["state"], r["rescues"], r["attempt"]) for r in rows] == [("succeeded", 0, 1)] * 2


def test_a_sync_transaction_inside_an_async_task_is_refused_with_a_clear_error(
    app: App, probe: Probe
) -> None:
    @app.task(name="wrong_kind", max_attempts=1)
    async def wrong_kind() -> None:
        with current_job().transaction():
            pass

    job = wrong_kind.enqueue()
    with running_worker(app):
        row = probe.wait_state(job, "dead", timeout=30)
    assert "async with ctx.atransaction()" in row["errors"][-1]["message"]


def test_current_job_outside_a_job_is_a_clear_error() -> None:
    with pytest.raises(UnbrokenError, match="outside a running unbroken job"):
        current_job().progress(done=1)


# --- progress ----------------------------------------------------------------------------------
def _calls(probe: Probe) -> dict[str, int]:
    """Calls so far of every statement run in this database (pg_stat_statements)."""
    probe.rows("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    rows = probe.rows(
        "SELECT queryid::text AS id, calls FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return {r["id"]: int(r["calls"]) for r in rows}


def _calls_of(probe: Probe, fragment: str) -> int:
    return int(
        probe.value(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s"
            " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [f"%{fragment}%"],
        )
    )


def test_ten_thousand_reports_cost_a_few_writes_and_the_last_one_is_stored(
    app: App, probe: Probe
) -> None:
    @app.task(name="count_up")
    async def count_up(n: int) -> None:
        ctx = current_job()
        for i in range(1, n + 1):
            ctx.progress(done=i, total=n, message=f"row {i}")
            if i % 2000 == 0:  # spread the reports over a few heartbeats
                await asyncio.sleep(app.settings.heartbeat_interval)

    with running_worker(app):
        before = _calls(probe)
        renewals = _calls_of(probe, "unbroken.workers SET heartbeat_at")
        job = count_up.enqueue(10_000)
        row = probe.wait_state(job, "succeeded", timeout=60)
        after = _calls(probe)
        renewals = _calls_of(probe, "unbroken.workers SET heartbeat_at") - renewals
    grown = {q: n - before.get(q, 0) for q, n in after.items() if n > before.get(q, 0)}
    print(f"statements run while the job ran: {sum(grown.values())}; heartbeats: {renewals}")
    assert max(grown.values()) < 100  # no statement per report
    assert renewals <= 30  # the reports rode with these (about 5 at 0.3 s each)
    assert row["progress"]["processed"] == 10_000  # the last report, sent with the outcome
    assert row["progress"]["total"] == 10_000
    assert row["progress"]["message"] == "row 10000"


def test_a_report_from_a_stale_claim_changes_nothing(probe: Probe, app: App) -> None:
    [job_id] = insert_jobs(probe, "anything")
    claim = {"queues": ["default"], "limit": 1, "worker_id": "w1", "lease": 60.0}
    [first] = probe.rows(Q["job_get_available"], claim)
    # A claim the database forgot (a failover): the same attempt is claimed again.
    probe.rows(
        "UPDATE unbroken.jobs SET state = 'available', attempt = attempt - 1,"
        " worker_id = NULL, lease_expires_at = NULL WHERE id = %s",
        [job_id],
    )
    [second] = probe.rows(Q["job_get_available"], claim)
    assert first["attempt"] == second["attempt"] == 1
    assert first["token"] != second["token"]

    def renew(token: str, report: dict[str, Any]) -> list[dict[str, Any]]:
        params = {
            "ids": [job_id],
            "attempts": [second["attempt"]],
            "claims": [token],
            "progress": [json.dumps(report)],
            "lease": 60.0,
            "worker_id": "w1",
            # The heartbeat (re)registers its worker: who it is.
            **{"host": "test", "pid": 1, "queues": ["default"], "concurrency": 1},
        }
        return probe.rows(Q["lease_renew_many"], params)

    def finish(token: str, report: dict[str, Any]) -> list[dict[str, Any]]:
        params = {
            "ids": [job_id],
            "attempts": [second["attempt"]],
            "states": ["succeeded"],
            "delays": [None],
            "errors": [None],
            "results": [None],
            "runtimes": [1],
            "claims": [token],
            "progress": [json.dumps(report)],
            "worker_id": "w1",
        }
        return probe.rows(Q["job_finish_many"], params)

    assert renew(first["token"], {"processed": 99, "message": "stale"}) == []
    assert finish(first["token"], {"processed": 98, "message": "stale"}) == []
    assert probe.job(job_id)["progress"] is None
    assert renew(second["token"], {"processed": 5, "total": 10}) != []
    assert finish(second["token"], {"processed": 10, "message": "done"}) != []
    progress = probe.job(job_id)["progress"]
    assert {k: progress[k] for k in ("processed", "total", "message")} == {
        "processed": 10,
        "total": 10,
        "message": "done",
    }


def test_a_report_is_visible_in_jobs_watch_and_on_the_dashboard_job_page(
    app: App, probe: Probe, database_url: str
) -> None:
    release = threading.Event()

    @app.task(name="slow_report")
    def slow_report() -> None:
        current_job().progress(done=3, total=12, message="fetching page 3")
        release.wait(60)

    job = slow_report.enqueue()
    with running_worker(app):
        wait_until(
            lambda: (probe.job(job)["progress"] or {}).get("processed") == 3,
            timeout=30,
            what="the report to be flushed with a heartbeat",
        )
        watched = cli(database_url, "jobs", "watch", str(job), "--json", "--timeout", "0")
        [first] = [json.loads(line) for line in watched.stdout.splitlines()[:1]]
        assert first["progress"]["processed"] == 3
        assert first["progress"]["total"] == 12
        assert first["progress"]["fraction"] == 0.25
        assert first["progress"]["message"] == "fetching page 3"
        shown = cli(database_url, "jobs", "show", str(job))
        assert "fetching page 3" in shown.stdout, shown.stdout
        settings = load_settings(database_url=database_url)
        with TestClient(
            create_app(settings, credentials=None), base_url="http://localhost"
        ) as client:
            page = client.get(f"/jobs/{job}")
            assert page.status_code == 200
            assert "fetching page 3" in page.text
            assert "3 / 12" in page.text
        release.set()
        probe.wait_state(job, "succeeded", timeout=30)


def test_bad_reports_are_refused_with_a_clear_error(app: App, probe: Probe) -> None:
    @app.task(name="bad_report", max_attempts=1)
    def bad_report(done: Any, total: Any) -> None:
        current_job().progress(done=done, total=total)

    jobs = [bad_report.enqueue(-1, None), bad_report.enqueue(5, 4), bad_report.enqueue("a", 1)]
    with running_worker(app):
        rows = [probe.wait_state(j, "dead", timeout=30) for j in jobs]
    messages = [r["errors"][-1]["message"] for r in rows]
    assert messages == [
        "progress done=-1: must be a whole number >= 0",
        "progress done=5 is more than total=4",
        "progress done='a': must be a whole number >= 0",
    ]


def test_a_report_postgresql_cannot_store_never_stops_the_heartbeats(
    app: App, probe: Probe
) -> None:
    """A message with a lone surrogate (a file name decoded with surrogateescape) or a count
    beyond bigint once made every heartbeat of the worker fail: its jobs' leases ran out,
    they were rescued and ran again elsewhere. A report is never what a lease depends on."""

    @app.task(name="odd_report", max_attempts=1)
    async def odd_report(seconds: float) -> None:
        current_job().progress(done=1, total=2, message="caf\udce9.csv")
        await asyncio.sleep(seconds)  # longer than a lease (3 s): heartbeats must go on

    @app.task(name="neighbour", max_attempts=1)
    async def neighbour(seconds: float) -> None:
        await asyncio.sleep(seconds)

    job, other = odd_report.enqueue(8.0), neighbour.enqueue(8.0)
    with running_worker(app):
        rows = [probe.wait_state(j, "succeeded", timeout=60) for j in (job, other)]
    assert [(r["attempt"], r["rescues"]) for r in rows] == [(1, 0), (1, 0)]
    assert rows[0]["progress"]["message"] == "caf\\udce9.csv"  # kept, escaped
    with pytest.raises(ValueError, match="at most 9223372036854775807"):
        current_job_free_progress(done=2**63)


def current_job_free_progress(**report: Any) -> None:
    """progress() of a context outside any worker: its checks alone."""
    from unbroken.context import JobContext

    ctx = JobContext.__new__(JobContext)
    ctx._reported = (0, {})
    ctx.progress(**report)


def test_the_last_flushed_report_survives_a_sigkill_and_the_retry_sees_it(
    app: App, probe: Probe, database_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "never"
    fast = {"lease_seconds": 3.0, "heartbeat_interval": 0.3, "rescue_interval": 1.0}
    with worker_processes(database_url, tmp_path, "tests.apps.jobapi_app:app", **fast) as start:
        first = start("first")
        first.wait_registered(probe)
        [job] = insert_jobs(
            probe, "report_then_wait", kwargs={"done": 40, "total": 100, "gate": str(gate)}
        )
        wait_until(
            lambda: (probe.job(job)["progress"] or {}).get("processed") == 40,
            timeout=30,
            what="the report to be flushed",
        )
        first.proc.send_signal(signal.SIGKILL)
        first.wait_exit(10)
        second = start("second")
        row = probe.wait_state(job, "succeeded", timeout=60)
    assert row["rescues"] == 1
    assert row["attempt"] == 2
    assert row["result"] == {"resumed_from": 40, "total": 100, "message": f"pid {first.pid}"}
    assert second.pid != first.pid
