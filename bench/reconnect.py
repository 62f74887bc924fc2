"""Time from a server restart to the first good connection (foundation issue 2).

    python -m bench.reconnect [--repeat 5] [--sizes 1,4,16] [--outages 3,7]

A throwaway server of its own (never the embedded default: it gets restarted). For each
stop mode (fast: a clean restart, every session gets AdminShutdown; immediate: a crash and
recovery) and pool size (1, 4, 16: min_size = max_size = size, every connection open and
idle beforehand) a `unbroken.db._sync.pool.Database(...).pool()` is opened, then:

- idle through the restart: the server is stopped and started while nobody uses the
  pool; the clock starts when the server accepts connections again and stops when
  `with pool.connection() as conn: conn.execute("SELECT 1")` first succeeds;
- busy through the restart: a thread checks out and runs SELECT 1 every 10 ms all
  along; the same clock, from "server accepts again" to its first success after that.

Then outages (issue 11 item 7): the server stays down for each of `--outages` seconds (fast
stop) while the busy thread keeps asking; its checkout waits in the pool (up to
pool_acquire_timeout, 10 s) through the outage. The same clock: from "server accepts again"
to its first success after that.

Also reported: the server's own restart time (stop issued to accepting again), the time
until the pool is back to its full size, and the pool's failed connection attempts per
second of server downtime (a reconnect storm shows there). Median of `repeat` runs;
target < 1 s.
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
    """Counts psycopg_pool's failed connection attempts instead of printing its warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("error connecting"):
            self.count += 1


def _accepting(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def _restart(
    server: LocalServer, mode: StopMode, url: str, outage: float = 0.0
) -> tuple[float, float]:
    """Restart (down `outage` s in between); returns (stop issued, server accepts again)."""
    issued = time.monotonic()
    server.stop(mode)
    if outage:
        time.sleep(outage)  # the outage itself: what is measured starts after it
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


def one(
    server: LocalServer, url: str, mode: StopMode, size: int, busy: bool, outage: float = 0.0
) -> dict[str, float]:
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
        issued, up = _restart(server, mode, url, outage)
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


def run_section(
    *, sizes: list[int], repeat: int, outages: Sequence[float] = (3.0, 7.0)
) -> dict[str, Any]:
    pool_log = logging.getLogger("psycopg.pool")
    counter = _Count()
    saved = pool_log.propagate
    pool_log.addHandler(counter)
    pool_log.propagate = False
    try:
        return _section(sizes, repeat, list(outages), counter)
    finally:
        pool_log.removeHandler(counter)
        pool_log.propagate = saved


def _cases(sizes: list[int], outages: list[float]) -> list[tuple[StopMode, bool, int, float]]:
    """(stop mode, busy, size, seconds down): every restart, then the busy outages."""
    modes: tuple[StopMode, ...] = ("fast", "immediate")
    cases = [(m, busy, size, 0.0) for m in modes for busy in (False, True) for size in sizes]
    return cases + [("fast", True, size, down) for down in outages for size in sizes]


def _section(
    sizes: list[int], repeat: int, outages: list[float], counter: _Count
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="unbroken-bench-reconnect-"))
    server = LocalServer(root / "data")
    out: dict[str, Any] = {"sizes": sizes, "repeat": repeat, "outages": outages, "runs": {}}
    rows = []
    try:
        server.init()
        server.start()
        url = server.url("postgres")
        wait_until_accepting(url)
        for mode, busy, size, down in _cases(sizes, outages):
            use = "busy" if busy else "idle"
            what = f"down {down:g} s" if down else f"{mode} restart"
            label = f"{mode}/{use}/{size}" + (f"/down{down:g}s" if down else "")
            progress(f"reconnect: {what}, pool of {size}, {use}")
            runs = []
            for _ in range(repeat):
                before = counter.count
                run = one(server, url, mode, size, busy, down)
                run["failed_connects"] = float(counter.count - before)
                runs.append(run)
            out["runs"][label] = runs
            first = Repeated([r["first_good_after_up_s"] for r in runs], False)
            restart = Repeated([r["server_restart_s"] for r in runs], False)
            full = Repeated([r["full_pool_after_up_s"] for r in runs], False)
            failed = sum(r["failed_connects"] for r in runs)
            downtime = sum(r["server_restart_s"] for r in runs)
            rows.append(
                [
                    what,
                    use,
                    str(size),
                    fmt(restart.median, 3),
                    fmt(first.median, 3),
                    fmt(max(first.values), 3),
                    fmt(full.median, 3),
                    fmt(sum(r["errors"] for r in runs) / repeat, 1),
                    fmt(failed / repeat, 1),
                    fmt(failed / downtime, 1),
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
                "server down",
                "first good (median)",
                "first good (worst)",
                "pool full again",
                "errors seen",
                "failed connects",
                "per s down",
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
    parser.add_argument("--outages", default="3,7", help="seconds down, busy pools ('': none)")
    args = parser.parse_args(argv)
    run_section(
        sizes=[int(s) for s in args.sizes.split(",")],
        repeat=args.repeat,
        outages=[float(s) for s in args.outages.split(",") if s],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
