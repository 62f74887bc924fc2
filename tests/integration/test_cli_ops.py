"""The operator commands as a user runs them: a subprocess, `--json` parsed, exit codes read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ops_seed import Seeded, state_of

UNBROKEN = str(Path(sys.executable).parent / "unbroken")


def cli(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    env.update(UNBROKEN_DATABASE_URL=url, COLUMNS="200", UNBROKEN_STARTUP_WAIT="2")
    return subprocess.run(
        [UNBROKEN, *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def cli_json(url: str, *args: str) -> Any:
    result = cli(url, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_operator_command_has_help_and_json(database_url: str) -> None:
    commands = [
        ["jobs", "ls"],
        ["jobs", "show"],
        ["jobs", "watch"],
        ["jobs", "retry"],
        ["jobs", "cancel"],
        ["dlq", "ls"],
        ["dlq", "retry"],
        ["dlq", "purge"],
        ["queues"],
        ["queues", "pause"],
        ["queues", "resume"],
        ["stats"],
        ["stuck"],
        ["workers"],
        ["health"],
    ]
    for command in commands:
        result = cli(database_url, *command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "--json" in result.stdout, command


def test_jobs_ls_filters(database_url: str, seeded: Seeded) -> None:
    listed = cli_json(database_url, "jobs", "ls", "--state", "dead")
    assert {j["id"] for j in listed["jobs"]} == {*seeded.dead_http, seeded.dead_hostile}
    assert listed["filter"] == "state=dead"
    by_args = cli_json(database_url, "jobs", "ls", "--args", '{"project": "ALPHA"}')
    assert [j["id"] for j in by_args["jobs"]] == [seeded.running]
    old = cli_json(database_url, "jobs", "ls", "--older-than", "5m", "--queue", "default")
    assert {j["id"] for j in old["jobs"]} == set(seeded.available)
    table = cli(database_url, "jobs", "ls", "--task", "sync.issues")
    assert table.returncode == 0
    assert "502 Bad Gateway" in table.stdout
    bad = cli(database_url, "jobs", "ls", "--state", "zombie")
    assert bad.returncode == 2
    assert "unknown job state 'zombie'" in bad.stderr


def test_jobs_show(database_url: str, seeded: Seeded) -> None:
    job = cli_json(database_url, "jobs", "show", str(seeded.dead_http[0]))
    assert job["state"] == "dead"
    assert [e["attempt"] for e in job["errors"]] == [1, 2, 3]
    assert job["errors"][0]["traceback"].startswith("Traceback")
    text = cli(database_url, "jobs", "show", str(seeded.running))
    assert "42.3%" in text.stdout
    assert "120.5 rows/s" in text.stdout
    missing = cli(database_url, "jobs", "show", "999999")
    assert missing.returncode == 1
    assert "no job 999999" in missing.stderr


def test_bulk_retry_asks_or_takes_yes(database_url: str, seeded: Seeded) -> None:
    refused = cli(database_url, "jobs", "retry", "--queue", "etl")
    assert refused.returncode == 2  # no terminal to confirm on: refused, nothing done
    assert "pass --yes" in refused.stderr
    assert state_of(database_url, seeded.dead_http[0]) == "dead"
    done = cli_json(database_url, "jobs", "retry", "--queue", "etl", "--yes")
    assert done == {"matched": 3, "changed": 3, "ids": sorted(seeded.dead_http)}
    assert state_of(database_url, seeded.dead_http[0]) == "available"


def test_retry_and_cancel_by_id(database_url: str, seeded: Seeded) -> None:
    retried = cli_json(database_url, "jobs", "retry", str(seeded.cancelled), str(seeded.running))
    assert retried == {"matched": 2, "changed": 1, "ids": [seeded.cancelled]}
    cancelled = cli_json(database_url, "jobs", "cancel", str(seeded.scheduled))
    assert cancelled["ids"] == [seeded.scheduled]
    assert state_of(database_url, seeded.scheduled) == "cancelled"
    both = cli(database_url, "jobs", "cancel", "1", "--queue", "x")
    assert both.returncode == 2


def test_dead_letters(database_url: str, seeded: Seeded) -> None:
    listed = cli_json(database_url, "dlq", "ls")
    assert listed["jobs"] == 4
    http = next(g for g in listed["groups"] if g["error_type"] == "HTTPError")
    assert http["jobs"] == 3
    assert cli(database_url, "dlq", "retry").returncode == 2  # which group? say it
    retried = cli_json(database_url, "dlq", "retry", http["key"], "--yes")
    assert retried["changed"] == 3
    purged = cli_json(database_url, "dlq", "purge", "--all", "--yes")
    assert purged["ids"] == [seeded.dead_hostile]
    assert state_of(database_url, seeded.dead_hostile) is None
    assert cli_json(database_url, "dlq", "ls") == {"groups": [], "jobs": 0}


def test_queues_pause_and_resume(database_url: str, seeded: Seeded) -> None:
    queues = {q["name"]: q for q in cli_json(database_url, "queues")["queues"]}
    assert queues["default"]["available"] == 3
    assert [p["priority"] for p in queues["default"]["priorities"]] == [10, 0]
    assert queues["reports"]["paused"] is True
    assert cli_json(database_url, "queues", "pause", "etl") == {"queue": "etl", "paused": True}
    assert cli_json(database_url, "queues", "resume", "reports")["paused"] is False
    queues = {q["name"]: q for q in cli_json(database_url, "queues")["queues"]}
    assert queues["etl"]["paused"] is True
    assert queues["reports"]["paused"] is False
    table = cli(database_url, "queues")
    assert "(paused)" in table.stdout


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
    # Every worker silent: critical, so not ready (still live: the database answers).
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE unbroken.workers SET heartbeat_at = now() - interval '1 hour'")
    assert cli(database_url, "health").returncode == 1
    assert cli(database_url, "health", "--ready").returncode == 1
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


def test_reading_commands_name_a_missing_schema(database_url: str) -> None:
    result = cli(database_url, "jobs", "ls")
    assert result.returncode == 1
    assert "run `unbroken db migrate`" in result.stderr


def test_watch_follows_a_job_until_it_finishes(database_url: str, seeded: Seeded) -> None:
    done = cli(database_url, "jobs", "watch", str(seeded.succeeded[0]), "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout.splitlines()[-1])["state"] == "succeeded"
    # A running job: finish it while the watcher polls; it exits when the job does.
    watcher = subprocess.Popen(
        [
            UNBROKEN,
            "jobs",
            "watch",
            str(seeded.running),
            "--json",
            "--interval",
            "0.2",
            "--timeout",
            "30",
        ],
        env={**os.environ, "UNBROKEN_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    first = json.loads(watcher.stdout.readline())
    assert first["state"] == "running"
    assert first["progress"]["processed"] == 420
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE unbroken.jobs SET state = 'succeeded', finished_at = now(), worker_id = NULL,"
            " lease_expires_at = NULL, progress = progress || '{\"processed\": 1000}'"
            " WHERE id = %s",
            [seeded.running],
        )
    out, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    last = json.loads(out.splitlines()[-1])
    assert last["state"] == "succeeded"
    assert last["progress"]["processed"] == 1000
    dead = cli(database_url, "jobs", "watch", str(seeded.dead_hostile))
    assert dead.returncode == 1
