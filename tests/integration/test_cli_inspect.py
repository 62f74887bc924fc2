"""`unbroken stats|stuck|workers|health` as a user runs them, and health's exit codes."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from cli_support import cli, cli_json
from ops_seed import Seeded
from pg import Faults
from unbroken.migrations import available


def test_stats_stuck_workers(database_url: str, seeded: Seeded) -> None:
    stats = cli_json(database_url, "stats", "--window", "30m")
    assert stats["window_s"] == 1800
    tasks = {t["task"]: t for t in stats["tasks"]}
    assert tasks["emails.send"]["failure_rate"] > 0
    assert tasks["emails.send"]["p50_s"] == pytest.approx(3.5)
    stuck = cli_json(database_url, "stuck")
    assert [j["id"] for j in stuck["jobs"]] == [seeded.stuck]
    assert stuck["jobs"][0]["reason"] == "lease_expired"
    workers = {w["id"]: w for w in cli_json(database_url, "workers")["workers"]}
    assert workers["host-b:2:w2"]["silent"] is True
    assert workers["host-a:1:w1"]["job_ids"] == [seeded.running]


def test_health_exit_codes(database_url: str, seeded: Seeded) -> None:
    degraded = cli(database_url, "health", "--json")
    assert degraded.returncode == 0  # degraded still passes
    report = json.loads(degraded.stdout)
    assert report["status"] == "degraded"
    assert {r["check"] for r in report["reasons"] if r["level"] == "warn"} >= {"stuck", "workers"}
    assert cli(database_url, "health", "--ready").returncode == 0
    assert cli(database_url, "health", "--live").returncode == 0
    # Every worker silent: critical, so unhealthy; still ready and live (the database
    # answers with a current schema).
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE unbroken.workers SET heartbeat_at = now() - interval '1 hour'")
    assert cli(database_url, "health").returncode == 1
    assert cli(database_url, "health", "--ready").returncode == 0
    assert cli(database_url, "health", "--live").returncode == 0


def test_health_probes_without_a_database_fail_fast(database_url: str) -> None:
    missing_schema = cli(database_url, "health", "--ready")
    assert missing_schema.returncode == 1
    assert "unbroken db migrate" in missing_schema.stderr
    assert cli(database_url, "health", "--live").returncode == 0
    nowhere = "postgresql://nobody@127.0.0.1:1/none"
    started = time.monotonic()
    down = cli(nowhere, "health", "--live", "--json", "--timeout", "2")
    assert down.returncode == 1
    assert json.loads(down.stdout)["live"] is False
    assert time.monotonic() - started < 15


def test_stats_mean_and_percentiles_come_from_the_same_jobs(
    database_url: str, seeded: Seeded
) -> None:
    """The six succeeded emails.send jobs took 1..6 s; the per-minute counters say the
    task's attempts averaged 0.12 s. Mean, min, max and percentiles are all of the six."""
    stats = cli_json(database_url, "stats", "--window", "30m")
    emails = {t["task"]: t for t in stats["tasks"]}["emails.send"]
    assert emails["timed"] == 6
    assert (emails["min_s"], emails["max_s"]) == (pytest.approx(1.0), pytest.approx(6.0))
    assert emails["min_s"] <= emails["avg_s"] <= emails["max_s"]
    assert emails["avg_s"] == pytest.approx(3.5)
    assert emails["p50_s"] == pytest.approx(3.5)
    assert emails["p50_s"] <= emails["p95_s"] <= emails["p99_s"] <= emails["max_s"]
    table = cli(database_url, "stats", "--window", "30m")
    assert table.returncode == 0, table.stderr
    assert "last 30m" in table.stdout
    assert "run times of the succeeded jobs timed" in table.stdout  # what they are of


def test_ready_is_about_this_process_serving_not_about_failing_jobs(
    database_url: str, seeded: Seeded
) -> None:
    """Most attempts failing, dead letters piling up, every worker silent: the report is
    unhealthy (exit 1), yet the database answers with a current schema, so ready."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE unbroken.stats_minutely SET failed = succeeded * 3"
            " WHERE minute >= now() - interval '15 minutes'"
        )
        conn.execute(
            "INSERT INTO unbroken.jobs (queue, task, args, state, attempt, max_attempts,"
            " attempted_at, finished_at)"
            " SELECT 'default', 'emails.send', '{\"args\": [], \"kwargs\": {}}', 'dead', 1, 1,"
            " now() - interval '2 minutes', now() - interval '1 minute'"
            " FROM generate_series(1, 60)"
        )
        conn.execute("UPDATE unbroken.workers SET heartbeat_at = now() - interval '1 hour'")
    report = json.loads(cli(database_url, "health", "--json").stdout)
    critical = {r["check"] for r in report["reasons"] if r["level"] == "critical"}
    assert critical >= {"failure_rate", "dead_letters", "workers"}, report
    assert report["status"] == "unhealthy"
    assert report["ready"] is True
    assert cli(database_url, "health").returncode == 1
    ready = cli(database_url, "health", "--ready")
    assert (ready.returncode, ready.stdout.strip()) == (0, "ready: yes"), ready.stderr
    assert cli(database_url, "health", "--live").returncode == 0
    # A schema behind the code is this process's problem: not ready, saying why.
    latest = available()[-1].version
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM unbroken.migrations WHERE version = %s", [latest])
    behind = cli(database_url, "health", "--ready")
    assert (behind.returncode, behind.stdout.strip()) == (1, "ready: no")
    assert f"code expects {latest}" in behind.stderr


def test_not_ready_while_the_database_is_down(
    database_url: str, seeded: Seeded, faults: Faults
) -> None:
    faults.stop()
    down = cli(database_url, "health", "--ready", "--timeout", "2")
    assert (down.returncode, down.stdout.strip()) == (1, "ready: no"), down.stderr
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1, down.stderr
    assert lines[0].startswith("critical: "), down.stderr
    assert "Traceback" not in down.stderr
    faults.start()
    assert cli(database_url, "health", "--ready").returncode == 0
