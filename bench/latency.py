"""Enqueue-to-start latency with an idle worker.

One worker process waits (LISTEN, nothing queued). The benchmark enqueues one job at a
time with `task.enqueue()`, 10 to 30 ms apart (random, so nothing lines up with a timer in
the worker), and never two at once. The task returns `time.time()` at the moment its body
begins; the job row keeps it as its result. Three figures per job:

- enqueue call -> task body starts: the client's clock just before `enqueue()` to the
  task's clock (both the same host clock). This is the headline figure.
- row created -> task body starts: `created_at` (the DB's clock, the start of the insert's
  transaction) to the task's clock.
- row created -> claimed: `attempted_at - created_at`, both the DB's clock.

The first 20 jobs warm up (pool, prepared statements) and are not counted.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg

from bench import server as pg
from bench.app import build
from bench.common import fmt, percentile, progress, say, table, verdict
from bench.cpu import wait_for_quiet
from bench.procs import start_worker

DB = "bench_latency"
TARGET_P99_MS = 5.0
WARMUP = 20


def run_section(
    server: pg.BenchServer, *, samples: int, concurrency: int, repeat: int
) -> dict[str, Any]:
    url = server.fresh_database(DB)
    bapp = build(database_url=url, application_name="bench-enqueue")
    bapp.app.migrate()
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(repeat):
            progress(f"latency: {samples} jobs one at a time, idle worker (run {rep + 1})")
            runs.append(run_once(bapp, url, samples, concurrency))
    finally:
        bapp.app.close()
    best = min(runs, key=lambda r: r["call_to_start_ms"]["p99"])
    p99s = sorted(r["call_to_start_ms"]["p99"] for r in runs)
    median_p99 = p99s[len(p99s) // 2]
    rows = []
    for label, key in (
        ("enqueue call -> task starts", "call_to_start_ms"),
        ("enqueue() returned -> task starts", "return_to_start_ms"),
        ("row created -> task starts", "created_to_start_ms"),
        ("row created -> claimed (DB clock)", "created_to_claim_ms"),
        ("enqueue() call itself", "enqueue_call_ms"),
    ):
        d = best[key]
        rows.append([label, fmt(d["p50"], 2), fmt(d["p90"], 2), fmt(d["p99"], 2), fmt(d["max"], 2)])
    say(
        table(
            f"enqueue-to-start latency, idle worker (concurrency {concurrency}), {samples} jobs "
            f"one at a time, ms (best run of {repeat} by p99; p99 of every run: "
            f"{', '.join(f'{p:.2f}' for p in p99s)}; target p99 <= {TARGET_P99_MS:g} ms: "
            f"{verdict(median_p99 <= TARGET_P99_MS)} by the median run)",
            ["interval", "p50", "p90", "p99", "max"],
            rows,
        )
    )
    return {
        "samples": samples,
        "concurrency": concurrency,
        "runs": runs,
        "best": best,
        "p99_median_of_runs": median_p99,
    }


RESET = b"TRUNCATE unbroken.jobs, unbroken.workers, unbroken.leaders"


def run_once(
    bapp: Any, url: str, samples: int, concurrency: int, reset: bytes = RESET
) -> dict[str, Any]:
    """One latency run; `reset` empties what an earlier run left (bench/retention.py keeps
    its seeded finished jobs)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(reset)
        # Settle the server like the other parts do: a checkpoint still spreading the
        # earlier parts' writes makes every WAL flush (two per job here) slower.
        conn.execute("CHECKPOINT")
    worker = start_worker(url, "bench-lat", concurrency, burst=False)
    try:
        worker.wait_ready()
        time.sleep(1.0)  # its first fetch found nothing: it is idle now
        wait_for_quiet()
        sent: dict[int, tuple[float, float]] = {}
        rng = random.Random(7)
        for i in range(WARMUP + samples):
            t0 = time.time()
            job_id = bapp.stamp.enqueue()
            t1 = time.time()
            if i >= WARMUP:
                sent[job_id] = (t0, t1)
            time.sleep(rng.uniform(0.010, 0.030))
        deadline = time.monotonic() + 30
        rows: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            with psycopg.connect(url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT id, extract(epoch FROM created_at)::float8,"
                    " extract(epoch FROM attempted_at - created_at)::float8,"
                    " (result #>> '{}')::float8 FROM unbroken.jobs"
                    " WHERE state = 'succeeded' AND id = ANY(%s)",
                    [list(sent)],
                ).fetchall()
            if len(rows) == len(sent):
                break
            time.sleep(0.1)
    finally:
        worker.stop()
    if len(rows) != len(sent):
        raise RuntimeError(f"latency: {len(rows)} of {len(sent)} jobs finished; log {worker.log}")
    call_to_start, return_to_start, created_to_start, created_to_claim, call = [], [], [], [], []
    for job_id, created, claim, started in rows:
        t0, t1 = sent[job_id]
        call_to_start.append((started - t0) * 1000)
        return_to_start.append((started - t1) * 1000)
        created_to_start.append((started - created) * 1000)
        created_to_claim.append(claim * 1000)
        call.append((t1 - t0) * 1000)
    return {
        "call_to_start_ms": _summary(call_to_start),
        "return_to_start_ms": _summary(return_to_start),
        "created_to_start_ms": _summary(created_to_start),
        "created_to_claim_ms": _summary(created_to_claim),
        "enqueue_call_ms": _summary(call),
    }


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "n": float(len(values)),
    }
