"""A CDC pipeline in real worker processes (tests/apps/cdc_app.py): SIGKILL mid-chunk."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apps.cdc_app import SINK_SQL, TASK
from apps.harness import Probe, StartWorker, insert_jobs, wait_until, worker_processes
from cdc_source import CdcSource
from pg import durable_commits
from unbroken import migrations

APP_REF = "tests.apps.cdc_app:app"
WORKER_SETTINGS = {
    "lease_seconds": 3,
    "heartbeat_interval": 1,
    "rescue_interval": 1,
    "promote_interval": 0.2,
    "poll_interval": 0.5,
}
TAKEOVER = 25.0


@pytest.fixture
def probe(database_url: str) -> Iterator[Probe]:
    durable_commits(database_url)  # the pipeline's commits are flushed: so must the server's be
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute(SINK_SQL.encode())
    probe = Probe(database_url)
    yield probe
    probe.close()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    with worker_processes(database_url, tmp_path, APP_REF, **WORKER_SETTINGS) as start:
        yield start


def job_row(probe: Probe, job_id: int) -> dict[str, Any]:
    return probe.rows(
        "SELECT state::text AS state, attempt, rescues, worker_id FROM unbroken.jobs WHERE id = %s",
        [job_id],
    )[0]


def wait_succeeded(probe: Probe, job_id: int, timeout: float) -> dict[str, Any]:
    row: dict[str, Any] = wait_until(
        lambda: (r := job_row(probe, job_id))["state"] in ("succeeded", "dead") and r,
        timeout=timeout,
        what=f"job {job_id} to finish",
    )
    assert row["state"] == "succeeded", row
    return row


def test_worker_killed_mid_chunk_sink_equals_source_no_duplicate_no_gap(
    probe: Probe, workers: StartWorker, cdc_source: CdcSource
) -> None:
    cdc_source.execute("CREATE TABLE events (id int PRIMARY KEY)")
    a = workers("a")
    a.wait_registered(probe)
    [first] = insert_jobs(probe, TASK, kwargs={"source_url": cdc_source.url})
    wait_succeeded(probe, first, timeout=60)  # the slot exists: what follows is streamed
    n = 3000
    for start in range(1, n + 1, 10):  # 300 source transactions of 10 rows
        cdc_source.execute(
            "INSERT INTO events SELECT generate_series(%s::int, %s::int)", [start, start + 9]
        )
    [job] = insert_jobs(
        probe, TASK, kwargs={"source_url": cdc_source.url, "pause": 0.3, "chunk_size": 25}
    )
    wait_until(
        lambda: probe.value("SELECT count(*) FROM events_log WHERE op = 'insert'") >= n // 4,
        timeout=60,
        what="a quarter of the changes committed",
    )
    assert job_row(probe, job)["state"] == "running"
    a.signal(signal.SIGKILL)  # sleeping inside a chunk's transaction
    a.proc.wait(10)
    b = workers("b")
    b.wait_registered(probe)
    final = wait_succeeded(probe, job, timeout=TAKEOVER + 60)
    assert final["attempt"] == 2

    applied = probe.rows(
        "SELECT id, count(*) AS n FROM events_log WHERE op = 'insert' GROUP BY id ORDER BY id"
    )
    twice = [r for r in applied if r["n"] != 1]
    assert twice == [], f"applied more than once: {twice[:5]}"
    assert [r["id"] for r in applied] == list(range(1, n + 1))  # no gap
    by_attempt = probe.rows(
        "SELECT attempt, count(*) AS n FROM events_log WHERE op = 'insert' GROUP BY 1 ORDER BY 1"
    )
    assert [r["attempt"] for r in by_attempt] == [1, 2]  # the kill really was mid-stream
    position = probe.value("SELECT position::text FROM unbroken.cdc_pipelines")
    confirmed = cdc_source.value(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
        " WHERE slot_name = 'unbroken_events'"
    )
    assert position == confirmed
    assert b.stop() == 0
