"""`unbroken demo --cdc` as a newcomer runs it: on a fresh embedded data dir (wal_level
replica, as `unbroken db start` makes it), ending with sink == source and no slot left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from unbroken.embedded import LocalServer

REPO = Path(__file__).resolve().parents[2]


def test_demo_cdc_streams_a_table_into_an_identical_sink(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UNBROKEN_", "PG")) and k != "DATABASE_URL"
    }
    env.update(UNBROKEN_DATA_DIR=str(data_dir), COLUMNS="200")
    cli = [sys.executable, "-m", "unbroken"]
    server = LocalServer(data_dir)
    try:
        started = subprocess.run(
            [*cli, "db", "start"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert started.returncode == 0, started.stderr
        out_path = tmp_path / "demo.out"
        with out_path.open("wb") as out:
            demo = subprocess.Popen(
                [*cli, "demo", "--cdc", "--timeout", "150"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its worker processes share its process group
            )
            try:
                code = demo.wait(timeout=200)
            finally:
                if demo.poll() is None:
                    os.killpg(demo.pid, signal.SIGKILL)
                    demo.wait(30)
        text = out_path.read_text(errors="replace")
        assert code == 0, text[-4000:]
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        assert (
            "embedded PostgreSQL restarted with wal_level=logical (set with ALTER SYSTEM: it stays)"
            in lines
        )
        assert "replication slot unbroken_cdc_demo dropped;" in lines[-3]
        assert lines[-2].startswith("sink == source: ")
        assert " rows identical in " in lines[-2]
        assert lines[-1].startswith("embedded PostgreSQL left running on 127.0.0.1:")
        assert "Traceback" not in text

        with psycopg.connect(server.url("unbroken"), autocommit=True) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
            row = conn.execute(
                "SELECT state, last_error FROM unbroken.cdc_pipelines WHERE name = 'cdc_demo'"
            ).fetchone()
        assert row == ("stopped", "replication slot dropped at the end of `unbroken demo --cdc`")

        again = subprocess.run(  # a second run starts over (and needs no restart)
            [*cli, "demo", "--cdc", "--timeout", "150"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=200, check=False,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
        assert "restarted with wal_level=logical" not in again.stdout
        assert "sink == source: " in again.stdout
    finally:
        server.stop("immediate")
