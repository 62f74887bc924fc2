"""`unbroken db start|status|url|stop` on a fresh embedded data directory, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNBROKEN_", "PG"))}
    env.pop("DATABASE_URL", None)
    env["UNBROKEN_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "unbroken", "db", *args],
        env=env,
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
