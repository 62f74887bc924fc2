"""`unbroken db start|status|url|stop` on a fresh embedded data directory, as a user runs them;
after `db stop`, the commands that only read say it is stopped instead of starting it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from unbroken.embedded import LocalServer


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return unbroken(data_dir, "db", *args)


def unbroken(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNBROKEN_", "PG"))}
    env.pop("DATABASE_URL", None)
    env.update(UNBROKEN_DATA_DIR=str(data_dir), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "unbroken", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_embedded_server_lifecycle_from_the_cli(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    try:
        started = run(data_dir, "start")
        assert started.returncode == 0, started.stderr
        assert "embedded PostgreSQL, started" in started.stdout
        url = run(data_dir, "url").stdout.strip()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("unbroken",)
        assert run(data_dir, "migrate").returncode == 0
        status = json.loads(run(data_dir, "status", "--json").stdout)
        assert status["running"] is True
        assert status["schema_version"] == status["latest_version"] >= 1
        again = run(data_dir, "start")  # a second process reuses the running server
        assert "reusing" in again.stdout
        assert run(data_dir, "url").stdout.strip() == url
    finally:
        stopped = run(data_dir, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(run(data_dir, "status", "--json").stdout)["running"] is False


READ_ONLY = [["jobs", "ls"], ["queues"], ["stats"], ["workers"], ["db", "url"]]


def assert_says_stopped(result: subprocess.CompletedProcess[str], how: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 3, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert how in lines[0]
    assert "`unbroken db start`" in lines[0]


def test_after_db_stop_read_only_commands_do_not_start_the_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    server = LocalServer(data_dir)
    try:
        assert run(data_dir, "start").returncode == 0
        assert run(data_dir, "migrate").returncode == 0
        assert run(data_dir, "stop").returncode == 0
        for command in READ_ONLY:
            result = unbroken(data_dir, *command)
            assert_says_stopped(result, f"embedded PostgreSQL is stopped (data in {data_dir})")
            assert not server.is_running(), f"`unbroken {' '.join(command)}` started it"
        health = unbroken(data_dir, "health")
        assert health.returncode == 1, health.stdout + health.stderr  # a probe's exit code
        shown = " ".join(health.stdout.split())
        assert f"embedded PostgreSQL is stopped (data in {data_dir})" in shown
        assert "`unbroken db start`" in shown
        status = run(data_dir, "status")
        assert status.returncode == 0, status.stderr
        assert "running: False" in status.stdout
        assert "`unbroken db start`" in status.stdout
        assert not server.is_running()

        again = run(data_dir, "start")  # the way back that the message names
        assert again.returncode == 0, again.stderr
        assert server.is_running()
        listed = unbroken(data_dir, "jobs", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
    finally:
        server.stop("immediate")


def test_read_only_commands_on_a_fresh_machine_create_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    try:
        for command in [["jobs", "ls"], ["db", "url"]]:
            result = unbroken(data_dir, *command)
            assert_says_stopped(result, f"no embedded PostgreSQL in {data_dir} yet")
        assert not data_dir.exists()
    finally:
        LocalServer(data_dir).stop("immediate")
