"""The soak: `make chaos MINUTES=10`. Not part of `make test`.

Chunked ETL syncs and a stream of small jobs run on supervised worker processes for the
given minutes while a chaos loop restarts PostgreSQL at random (5 to 40 s apart, 0 to 2 s
down, fast and immediate stops mixed) and SIGKILLs random workers (the supervisor starts
a replacement). Then the chaos stops, the backlog drains, and the invariants are checked:

- every job is final, and succeeded;
- every sync's sink equals its source exactly: every record present, none written twice;
- no small job's attempt ran to completion twice;
- no running job holds an expired lease; no session is idle in a transaction;
- the database never had more unbroken backends than the pools allow.

It prints a one-line verdict and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from unbroken.embedded import LocalServer

WORKERS = 3
WORKER_ENV = {
    "UNBROKEN_LEASE_SECONDS": "5",
    "UNBROKEN_HEARTBEAT_INTERVAL": "1",
    "UNBROKEN_RESCUE_INTERVAL": "1",
    "UNBROKEN_CONCURRENCY": "20",
    "UNBROKEN_QUEUES": "etl,small",
    "UNBROKEN_POOL_MAX_SIZE": "4",
    "UNBROKEN_STARTUP_WAIT": "120",
    "UNBROKEN_LOG_LEVEL": "WARNING",
}
# Per worker process: the runtime pool (3), the listener (1), the async and sync "chunks"
# pools (UNBROKEN_POOL_MAX_SIZE each), and a short-lived start-up or migration connection.
BACKENDS_PER_WORKER = 3 + 1 + 4 + 4 + 1
FINAL = ("succeeded", "dead", "cancelled")


@dataclass
class Tally:
    restarts: int = 0
    kills: int = 0
    syncs: int = 0
    small_jobs: int = 0
    max_backends: int = 0
    events: list[str] = field(default_factory=list)


class Supervisor:
    """Keeps WORKERS worker processes alive; a killed one is replaced within a second."""

    def __init__(self, url: str, log: Path) -> None:
        self.env = {**os.environ, **WORKER_ENV, "UNBROKEN_DATABASE_URL": url}
        self.log = log.open("ab")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "unbroken", "worker", "--app", "bench.soak_app:app"]
        return subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=self.log)

    def start(self) -> None:
        self.procs = [self.spawn() for _ in range(WORKERS)]

    def keep_alive(self) -> None:
        while not self.stopping:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self.stopping:
                    self.procs[i] = self.spawn()
            time.sleep(0.5)

    def kill_one(self) -> int:
        proc = random.choice([p for p in self.procs if p.poll() is None] or self.procs)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    def stop(self) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    # The driver's own pool reconnects through every restart; its log lines are noise here.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    root = Path(tempfile.mkdtemp(prefix="unbroken-soak-"))
    server = LocalServer(root / "data", extra_conf={"max_connections": "300"})
    server.init()
    server.start()
    url = server.url("postgres")
    os.environ["UNBROKEN_DATABASE_URL"] = url  # the enqueuer's App, imported below
    log = root / "workers.log"
    print(f"soak: {args.minutes:g} min, seed {seed}, server {url}, worker log {log}", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        from bench.soak_app import SINK_DDL
        from unbroken import migrations

        migrations.migrate(conn)
        conn.execute(SINK_DDL)
    tally = Tally()
    supervisor = Supervisor(url, log)
    supervisor.start()
    threading.Thread(target=supervisor.keep_alive, daemon=True).start()
    stop = threading.Event()
    threads = [
        threading.Thread(target=fn, args=(url, stop, tally), daemon=True)
        for fn in (_enqueue_loop, _monitor_loop)
    ]
    threads.append(threading.Thread(target=_chaos_loop, args=(server, supervisor, stop, tally)))
    for t in threads:
        t.start()
    time.sleep(args.minutes * 60)
    stop.set()
    for t in threads:
        t.join(60)
    print(f"chaos over after {args.minutes:g} min; draining the backlog", flush=True)
    violations = _drain_and_check(url, tally, timeout=600)
    supervisor.stop()
    violations += _after_stop_checks(url)
    server.stop("fast")
    summary = (
        f"{tally.syncs} syncs, {tally.small_jobs} small jobs, {tally.restarts} restarts, "
        f"{tally.kills} worker kills, max {tally.max_backends} backends"
    )
    if violations:
        print(f"VERDICT: FAIL ({summary}): " + "; ".join(violations))
        return 1
    print(f"VERDICT: PASS ({summary}); every job final, every sink exact, no leaks")
    return 0


def _enqueue_loop(url: str, stop: threading.Event, tally: Tally) -> None:
    from bench.soak_app import app, etl, small

    project = 0
    next_sync = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() >= next_sync:
                project += 1
                etl.enqueue(project)
                tally.syncs += 1
                next_sync = time.monotonic() + 30
            app.enqueue_many([small.job(tally.small_jobs + i) for i in range(20)])
            tally.small_jobs += 20
        except Exception as exc:  # the enqueuer lives through the chaos too
            tally.events.append(f"enqueue retried: {type(exc).__name__}")
        stop.wait(1.0)
    app.close()


def _monitor_loop(url: str, stop: threading.Event, tally: Tally) -> None:
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'unbroken:%'"
                ).fetchone()
                tally.max_backends = max(tally.max_backends, row[0] if row else 0)
        except psycopg.Error:
            pass  # the server is down right now
        stop.wait(0.5)


def _chaos_loop(
    server: LocalServer, supervisor: Supervisor, stop: threading.Event, tally: Tally
) -> None:
    next_kill = time.monotonic() + random.uniform(10, 40)
    while not stop.wait(random.uniform(5, 40)):
        mode: Any = random.choice(["fast", "immediate"])
        down = random.uniform(0, 2)
        server.stop(mode)
        time.sleep(down)
        server.start()
        tally.restarts += 1
        print(f"  restart #{tally.restarts}: {mode} stop, {down:.1f} s down", flush=True)
        if time.monotonic() >= next_kill:
            pid = supervisor.kill_one()
            tally.kills += 1
            print(f"  SIGKILL worker {pid}", flush=True)
            next_kill = time.monotonic() + random.uniform(10, 40)


def _drain_and_check(url: str, tally: Tally, timeout: float) -> list[str]:
    from bench.soak_app import ITEMS_PER_SYNC

    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state NOT IN ('succeeded','dead','cancelled')) "
                "FROM unbroken.jobs"
            ).fetchone()
            if row and row[0] == 0:
                break
            time.sleep(1)
        violations = []
        states = dict(
            conn.execute("SELECT state::text, count(*) FROM unbroken.jobs GROUP BY 1").fetchall()
        )
        if set(states) != {"succeeded"}:
            violations.append(f"jobs not all succeeded: {states}")
        bad_sinks = conn.execute(
            """SELECT project, count(*), max(writes) FROM soak.records GROUP BY project
               HAVING count(*) <> %s OR max(writes) <> 1""",
            [ITEMS_PER_SYNC],
        ).fetchall()
        if bad_sinks:
            violations.append(f"sinks not exact (project, rows, max writes): {bad_sinks[:5]}")
        synced = conn.execute("SELECT count(DISTINCT project) FROM soak.records").fetchone()
        if synced and synced[0] != tally.syncs:
            violations.append(f"{tally.syncs} syncs enqueued but {synced[0]} in the sink")
        expired = conn.execute(
            "SELECT count(*) FROM unbroken.jobs "
            "WHERE state = 'running' AND lease_expires_at < now()"
        ).fetchone()
        if expired and expired[0]:
            violations.append(f"{expired[0]} running jobs with an expired lease")
        limit = WORKERS * BACKENDS_PER_WORKER + 4  # + the enqueuer's pool
        if tally.max_backends > limit:
            violations.append(f"{tally.max_backends} backends seen, pools allow {limit}")
    return violations


def _after_stop_checks(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        idle = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
        ).fetchone()
    return [f"{idle[0]} sessions idle in transaction"] if idle and idle[0] else []


if __name__ == "__main__":
    raise SystemExit(main())
