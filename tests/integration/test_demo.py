"""`unbroken demo` (what `make demo` runs) as a newcomer runs it: on a fresh embedded data
dir, ending with where the server it leaves running keeps its data and how to stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from unbroken.embedded import LocalServer

REPO = Path(__file__).resolve().parents[2]


def test_demo_ends_saying_the_server_is_left_running_and_how_to_stop_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    scratch = tmp_path / "tmp"  # the demo must leave nothing in TMPDIR
    scratch.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UNBROKEN_", "PG")) and k != "DATABASE_URL"
    }
    env.update(UNBROKEN_DATA_DIR=str(data_dir), TMPDIR=str(scratch), COLUMNS="200")
    cli = [sys.executable, "-m", "unbroken"]
    out_path = tmp_path / "demo.out"
    server = LocalServer(data_dir)
    try:
        started = time.monotonic()
        with out_path.open("wb") as out:
            # Its own session: the demo's worker processes share its process group.
            demo = subprocess.Popen(
                [*cli, "demo", "--timeout", "150"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = demo.wait(timeout=180)
            finally:
                if demo.poll() is None:
                    os.killpg(demo.pid, signal.SIGKILL)
                    demo.wait(30)
        text = out_path.read_text(errors="replace")
        print(f"demo took {time.monotonic() - started:.1f} s: {text[-600:]}")
        assert code == 0, text[-4000:]
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        assert "every record written exactly once" in lines[-2]
        assert f"worker log: {data_dir}/unbroken-demo-workers.log" in lines[-2]
        assert lines[-1] == (
            f"embedded PostgreSQL left running on 127.0.0.1:{server.port} (data in "
            f"{data_dir}); stop it with `unbroken db stop`"
        )
        assert server.is_running()
        assert list(scratch.iterdir()) == []

        stopped = subprocess.run(
            [*cli, "db", "stop"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert stopped.returncode == 0, stopped.stderr
        assert not server.is_running()
    finally:
        server.stop("immediate")
