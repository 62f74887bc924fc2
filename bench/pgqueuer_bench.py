"""PGQueuer 1.6, side by side with unbroken on the same server in the same run.

PGQueuer lives in its own virtualenv, bench/.venv-pgqueuer (made here with `python -m
venv` and pip; never one of unbroken's dependencies). Its workers run what its CLI
`pgq run bench.pgq_side:factory --batch-size N --mode drain` runs (see bench/pgq_side.py),
in a database of their own on the same server. As for unbroken, 20,000 no-op jobs are
enqueued first (not measured), the table is ANALYZEd and CHECKPOINTed, then the worker
process(es) drain the queue and exit.
The rate is jobs / (commit time of the last 'successful' log row - time of the first
'picked' log row): the same clock and the same two moments as for unbroken.

How this follows PGQueuer's own benchmark (tools/benchmark.py, its "drain" strategy): a
pre-filled queue, async no-op entrypoints, PgQueuer.run(batch_size=..., mode=drain), uvloop.
Its benchmark runs several dequeue loops in one process by default; one `pgq run` process
is one loop on one connection, which is what "one worker" means for both systems here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import server as pg
from bench.common import BENCH_DIR, Repeated, fmt, progress, say, table
from bench.cpu import CpuWindow, quietest, wait_for_quiet
from bench.procs import Proc, spawn, with_app_name
from bench.throughput import cpu_text

VENV = BENCH_DIR / ".venv-pgqueuer"
PGQUEUER_VERSION = "1.6.0"
REQUIREMENTS = [f"pgqueuer=={PGQUEUER_VERSION}", "asyncpg", "psycopg[binary]"]
DB = "bench_pgqueuer"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> str:
    """Create bench/.venv-pgqueuer with PGQueuer and its drivers (once); its version line."""
    stamp = VENV / f".installed-{PGQUEUER_VERSION}"
    if not stamp.exists():
        progress(f"creating {VENV} with {' '.join(REQUIREMENTS)}")
        if not venv_python().exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(venv_python()), "-m", "pip", "install", "-q", *REQUIREMENTS],
            check=True,
        )
        stamp.touch()
    out = subprocess.run(
        [str(venv_python()), "-m", "bench.pgq_side", "version"],
        cwd=BENCH_DIR.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@dataclass
class PgqRun:
    driver: str
    batch_size: int
    workers: int
    jobs: int
    seconds: float
    rate: float
    xacts: int
    statements: int
    sessions: dict[str, dict[str, Any]]
    worker_cpu_seconds: float
    cpu: dict[str, float]


class PgqBench:
    def __init__(self, server: pg.BenchServer) -> None:
        self.server = server
        self.version = ensure_venv()
        self.url = server.fresh_database(DB)
        self._side(["install", "--dsn", self.url])
        self.commit_ts = server.has_commit_ts()
        self.pgss = server.has_pgss()

    def _side(self, args: list[str]) -> None:
        subprocess.run(
            [str(venv_python()), "-m", "bench.pgq_side", *args],
            cwd=BENCH_DIR.parent,
            check=True,
            env={**os.environ, "PYTHONPATH": str(BENCH_DIR.parent)},
        )

    def refill(self, jobs: int) -> None:
        self._side(["enqueue", "--dsn", self.url, "--jobs", str(jobs)])
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("ANALYZE")
            conn.execute("CHECKPOINT")
        pg.wait_no_backends(self.server.admin_url, DB)

    def start_worker(self, name: str, driver: str, batch_size: int) -> Proc:
        argv = ["-m", "bench.pgq_side", "worker", "--batch-size", str(batch_size)]
        env = {
            "PGQ_BENCH_DSN": with_app_name(self.url, name),
            "PGQ_BENCH_DRIVER": driver,
        }
        return spawn(name, argv, env=env, python=str(venv_python()), capture_stdout=False)

    def run(self, driver: str, batch_size: int, workers: int, jobs: int) -> PgqRun:
        """One measured run, repeated while other processes took too much CPU."""
        return quietest(
            lambda: self._run_once(driver, batch_size, workers, jobs),
            lambda r: r.cpu["others_cpu_pct"],
        )

    def _run_once(self, driver: str, batch_size: int, workers: int, jobs: int) -> PgqRun:
        self.refill(jobs)
        wait_for_quiet()
        admin = self.server.admin_url
        xacts_before = pg.xact_count(admin, DB)
        stmts_before = pg.statements(admin, DB) if self.pgss else {}
        window = CpuWindow(self.server.local.pid())
        with pg.ActivitySampler(admin, DB) as sampler:
            window.start()
            procs = [self.start_worker(f"pgq-w{i + 1}", driver, batch_size) for i in range(workers)]
            for p in procs:
                code = p.wait(timeout=600)
                if code != 0:
                    raise RuntimeError(f"pgq worker exited {code}; log {p.log}\n{p.log_tail()}")
            window.workers = sum(p.cpu_seconds or 0.0 for p in procs)
            window.stop()
        pg.wait_no_backends(admin, DB)
        xacts = pg.xact_count(admin, DB) - xacts_before
        delta = pg.statement_delta(stmts_before, pg.statements(admin, DB)) if self.pgss else []
        seconds = self.elapsed(jobs)
        return PgqRun(
            driver=driver,
            batch_size=batch_size,
            workers=workers,
            jobs=jobs,
            seconds=seconds,
            rate=jobs / seconds,
            xacts=xacts,
            statements=sum(s.calls for s in delta),
            sessions={p.name: sampler.peak_for(p.name) for p in procs},
            worker_cpu_seconds=sum(p.cpu_seconds or 0.0 for p in procs),
            cpu=window.as_json(),
        )

    def elapsed(self, jobs: int) -> float:
        end = "max(pg_xact_commit_timestamp(xmin))" if self.commit_ts else "max(created)"
        with psycopg.connect(self.url, autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
            row = conn.execute(
                "SELECT (SELECT min(created) FROM pgqueuer_log WHERE status = 'picked'),"
                f" (SELECT {end} FROM pgqueuer_log WHERE status = 'successful'),"
                " (SELECT count(*) FROM pgqueuer_log WHERE status = 'successful')"
            ).fetchone()
        assert row is not None
        assert left is not None
        first, last, done = row
        if done != jobs or left[0] != 0:
            raise RuntimeError(f"PGQueuer: {done} successful, {left[0]} left; expected {jobs}")
        assert isinstance(first, datetime)
        assert isinstance(last, datetime)
        return (last - first).total_seconds()


def run_section(
    server: pg.BenchServer,
    *,
    jobs: int,
    batch_sizes: list[int],
    drivers: list[str],
    repeat: int,
) -> dict[str, Any]:
    bench = PgqBench(server)
    out: dict[str, Any] = {"version": bench.version, "jobs": jobs, "one_worker": {}}
    rates: dict[tuple[str, int], Repeated] = {}
    runs: dict[tuple[str, int], list[PgqRun]] = {}
    for rep in range(repeat):
        for driver in drivers:
            for b in batch_sizes:
                progress(f"PGQueuer {driver}, 1 worker, batch size {b} (run {rep + 1})")
                r = bench.run(driver, b, 1, jobs)
                rates.setdefault((driver, b), Repeated()).add(r.rate)
                runs.setdefault((driver, b), []).append(r)
    best_key = max(rates, key=lambda k: rates[k].median)
    rows = []
    for key, rep_rates in rates.items():
        r = sorted(runs[key], key=lambda x: x.rate)[len(runs[key]) // 2]
        peak = next(iter(r.sessions.values()))["peak_total"] if r.sessions else 0
        rows.append(
            [
                key[0],
                f"{key[1]}{' *' if key == best_key else ''}",
                fmt(rep_rates.best),
                fmt(rep_rates.median),
                fmt(r.xacts / jobs, 4),
                fmt(r.statements / jobs, 4),
                str(peak),
                cpu_text(r.cpu),
            ]
        )
        out["one_worker"][f"{key[0]}/{key[1]}"] = {
            "rate": rep_rates.as_json(),
            "median_run": asdict(r),
        }
    say(
        table(
            f"PGQueuer {bench.version.split()[0]}, 1 worker process (pgq run --mode drain), "
            f"{jobs:,} async no-op jobs (best of {repeat}; * = best by median)",
            [
                "driver",
                "batch size",
                "jobs/s best",
                "jobs/s median",
                "xacts/job",
                "stmts/job",
                "peak sessions",
                "CPU % server/worker/others",
            ],
            rows,
        )
    )
    driver, batch = best_key
    out["best"] = {"driver": driver, "batch_size": batch, "rate": rates[best_key].as_json()}
    return out
