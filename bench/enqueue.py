"""Enqueue rate: one job at a time, in bulk, and a raw COPY of the same rows (the floor).

- `task.enqueue()` in a loop (sync) and `await task.aenqueue()` in a loop (async): one job,
  one round trip, one transaction each, through the app's "api" pool, as a web request
  handler would enqueue.
- `app.enqueue_many([task.job() ...])` in batches: the time includes building the jobs
  (`task.job()` validates the arguments and serialises them), as a caller pays it; the
  split between building and writing is reported too.
- COPY of the same columns (queue, task, args, priority, max_attempts; the rest are the
  table's defaults) in the same batch sizes, one COPY per transaction: the floor.

The table is emptied before each measurement, so every figure starts from the same size.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from bench import server as pg
from bench.app import build
from bench.common import Repeated, fmt, progress, say, table, verdict
from bench.cpu import wait_for_quiet

DB = "bench_enqueue"
TARGET_BULK = 100_000


def _truncate(url: str) -> None:
    """Empty the table, settle the server, and wait for a quiet machine."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE unbroken.jobs, unbroken.stats_minutely")
        conn.execute("CHECKPOINT")
    wait_for_quiet()


def run_section(
    server: pg.BenchServer,
    *,
    single_jobs: int,
    bulk_jobs: int,
    batches: list[int],
    repeat: int,
) -> dict[str, Any]:
    url = server.fresh_database(DB)
    bapp = build(database_url=url, application_name="bench-enqueue")
    app, task = bapp.app, bapp.noop_async
    app.migrate()
    figures: dict[str, Repeated] = {}
    split: dict[str, list[tuple[float, float]]] = {}

    def add(name: str, rate: float) -> None:
        figures.setdefault(name, Repeated()).add(rate)

    async def async_loop(n: int) -> float:
        for _ in range(20):  # warm the pool and the prepared statement
            await task.aenqueue()
        started = time.perf_counter()
        for _ in range(n):
            await task.aenqueue()
        elapsed = time.perf_counter() - started
        await app.aclose()
        return n / elapsed

    try:
        for rep in range(repeat):
            progress(f"enqueue: single sync / async, {single_jobs:,} jobs (run {rep + 1})")
            _truncate(url)
            for _ in range(20):
                task.enqueue()
            started = time.perf_counter()
            for _ in range(single_jobs):
                task.enqueue()
            add("task.enqueue() loop", single_jobs / (time.perf_counter() - started))
            _truncate(url)
            add("await task.aenqueue() loop", asyncio.run(async_loop(single_jobs)))

            for b in batches:
                progress(f"enqueue: enqueue_many batch {b:,}, {bulk_jobs:,} jobs (run {rep + 1})")
                _truncate(url)
                app.enqueue_many([task.job()])  # open the pool outside the timing
                built = written = 0.0
                for _ in range(0, bulk_jobs, b):
                    t0 = time.perf_counter()
                    specs = [task.job() for _ in range(b)]
                    t1 = time.perf_counter()
                    app.enqueue_many(specs)
                    t2 = time.perf_counter()
                    built += t1 - t0
                    written += t2 - t1
                name = f"app.enqueue_many, batch {b:,}"
                add(name, bulk_jobs / (built + written))
                split.setdefault(name, []).append((bulk_jobs / built, bulk_jobs / written))

            for b in batches:
                progress(f"enqueue: raw COPY batch {b:,} (run {rep + 1})")
                _truncate(url)
                add(f"raw COPY, batch {b:,}", _copy(url, bapp.noop_async.name, bulk_jobs, b))
    finally:
        app.close()
        server.drop_database(DB)

    rows = []
    for name, r in figures.items():
        target = ""
        if name.startswith("app.enqueue_many"):
            target = f">= {TARGET_BULK:,}: {verdict(r.median >= TARGET_BULK)}"
        parts = split.get(name)
        detail = ""
        if parts:
            best_build = max(p[0] for p in parts)
            best_write = max(p[1] for p in parts)
            detail = f"task.job() {fmt(best_build)}/s, write {fmt(best_write)}/s"
        rows.append([name, fmt(r.best), fmt(r.median), target, detail])
    say(
        table(
            f"enqueue rate, jobs/s (best and median of {repeat})",
            ["how", "best", "median", "target", "split (best)"],
            rows,
        )
    )
    out: dict[str, Any] = {name: r.as_json() for name, r in figures.items()}
    for name, parts in split.items():
        out[name]["build_rate_runs"] = [p[0] for p in parts]
        out[name]["write_rate_runs"] = [p[1] for p in parts]
    return out


def _copy(url: str, task_name: str, jobs: int, batch: int) -> float:
    """COPY `jobs` rows in COPYs of `batch` rows, one transaction each; jobs/s."""
    args = '{"args":[],"kwargs":{}}'
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for _ in range(0, jobs, batch):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY unbroken.jobs (queue, task, args, priority, max_attempts) FROM STDIN"
                ) as copy,
            ):
                for _ in range(batch):
                    copy.write_row(("default", task_name, args, 0, 20))
        return jobs / (time.perf_counter() - started)
