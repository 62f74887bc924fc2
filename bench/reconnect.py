"""Time from a server restart to the first good connection (foundation issue 2).

    python -m bench.reconnect [--repeat 5] [--sizes 1,4,16]

A throwaway server of its own (never the embedded default: it gets restarted). For each
stop mode (fast: a clean restart, every session gets AdminShutdown; immediate: a crash and
recovery) and pool size (1, 4, 16: min_size = max_size = size, every connection open and
idle beforehand) a `unbroken.db._sync.pool.Database(...).pool()` is opened, then:

- idle through the restart: the server is stopped and started while nobody uses the
  pool; the clock starts when the server accepts connections again and stops when
  `with pool.connection() as conn: conn.execute("SELECT 1")` first succeeds;
- busy through the restart: a thread checks out and runs SELECT 1 every 10 ms all
  along; the same clock, from "server accepts again" to its first success after that.

Also reported: the server's own restart time (stop issued to accepting again), and the time
until the pool is back to its full size. Median of `repeat` runs; target < 1 s.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.common import Repeated, fmt, progress, say, table, verdict
from bench.server import wait_until_accepting
from unbroken.db._sync.pool import Database
from unbroken.embedded import LocalServer, StopMode
from unbroken.settings import Settings

TARGET_SECONDS = 1.0


class _Count(logging.Handler):
    """Counts psycopg_pool's reconnect warnings instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _accepting(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def _restart(server: LocalServer, mode: StopMode, url: str) -> tuple[float, float]:
    """Restart; returns (monotonic time the stop was issued, time the server accepts again)."""
    issued = time.monotonic()
    server.stop(mode)
    server.start()
    while not _accepting(url):  # pg_ctl -w returned; prove it with a connection
        time.sleep(0.002)
    return issued, time.monotonic()


def _full(db: Database, size: int, timeout: float = 30.0) -> float:
    """Wait until the pool holds `size` idle connections; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.pool("bench").stats().idle >= size:
            return time.monotonic()
        time.sleep(0.005)
    return float("nan")


def one(server: LocalServer, url: str, mode: StopMode, size: int, busy: bool) -> dict[str, float]:
    settings = Settings(database_url=url, application_name="bench-reconnect")
    db = Database(url, settings)
    pool = db.pool("bench", min_size=size, max_size=size)
    db.open()
    try:
        _full(db, size)
        good: list[float] = []
        errors = 0
        stop = threading.Event()

        def hammer() -> None:
            nonlocal errors
            while not stop.is_set():
                try:
                    with pool.connection() as conn:
                        conn.execute("SELECT 1")
                    good.append(time.monotonic())
                except Exception:
                    errors += 1
                stop.wait(0.01)

        thread = threading.Thread(target=hammer, daemon=True) if busy else None
        if thread is not None:
            thread.start()
            time.sleep(0.1)
        issued, up = _restart(server, mode, url)
        first = float("nan")
        if thread is None:
            while time.monotonic() < up + 30:
                try:
                    with pool.connection() as conn:
                        conn.execute("SELECT 1")
                    first = time.monotonic()
                    break
                except Exception:
                    errors += 1
        else:
            deadline = up + 30
            while time.monotonic() < deadline and not [t for t in good if t >= up]:
                time.sleep(0.001)
            stop.set()
            thread.join(5)
            first = min((t for t in good if t >= up), default=float("nan"))
        full = _full(db, size)
        return {
            "server_restart_s": up - issued,
            "first_good_after_up_s": first - up,
            "first_good_after_stop_s": first - issued,
            "full_pool_after_up_s": full - up,
            "errors": float(errors),
        }
    finally:
        db.close()


def run_section(*, sizes: list[int], repeat: int) -> dict[str, Any]:
    pool_log = logging.getLogger("psycopg.pool")
    counter = _Count()
    saved = pool_log.propagate
    pool_log.addHandler(counter)
    pool_log.propagate = False
    try:
        return _section(sizes, repeat, counter)
    finally:
        pool_log.removeHandler(counter)
        pool_log.propagate = saved


def _section(sizes: list[int], repeat: int, counter: _Count) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="unbroken-bench-reconnect-"))
    server = LocalServer(root / "data")
    out: dict[str, Any] = {"sizes": sizes, "repeat": repeat, "runs": {}}
    rows = []
    try:
        server.init()
        server.start()
        url = server.url("postgres")
        wait_until_accepting(url)
        modes: tuple[StopMode, ...] = ("fast", "immediate")
        for mode in modes:
            for busy in (False, True):
                for size in sizes:
                    label = f"{mode}/{'busy' if busy else 'idle'}/{size}"
                    progress(f"reconnect: {mode} restart, pool of {size}, {label.split('/')[1]}")
                    before = counter.count
                    runs = [one(server, url, mode, size, busy) for _ in range(repeat)]
                    failed_connects = (counter.count - before) / repeat
                    out["runs"][label] = runs
                    first = Repeated([r["first_good_after_up_s"] for r in runs], False)
                    restart = Repeated([r["server_restart_s"] for r in runs], False)
                    full = Repeated([r["full_pool_after_up_s"] for r in runs], False)
                    rows.append(
                        [
                            mode,
                            "busy" if busy else "idle",
                            str(size),
                            fmt(restart.median, 3),
                            fmt(first.median, 3),
                            fmt(max(first.values), 3),
                            fmt(full.median, 3),
                            fmt(sum(r["errors"] for r in runs) / repeat, 1),
                            fmt(failed_connects, 1),
                            verdict(first.median < TARGET_SECONDS),
                        ]
                    )
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    say(
        table(
            f"restart to first good connection, s (Database(...).pool(), min = max = size; "
            f"median of {repeat}; target < {TARGET_SECONDS:g} s after the server is back)",
            [
                "restart",
                "pool use",
                "size",
                "server restart",
                "first good (median)",
                "first good (worst)",
                "pool full again",
                "errors seen",
                "failed connects",
                "target",
            ],
            rows,
        )
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="1,4,16")
    args = parser.parse_args(argv)
    run_section(sizes=[int(s) for s in args.sizes.split(",")], repeat=args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
