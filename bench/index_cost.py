"""What an index on finished jobs costs the workers: throughput and finish time, A/B.

    python -m bench.index_cost --variants 0009,none --pairs 3

Each variant is a set of indexes on unbroken.jobs besides those every variant shares; before
each run the database is switched to that variant (its indexes dropped or created, on an
empty table, so the switch is instant). Runs alternate A B A B ... so a noisy minute on a
shared machine hits every variant. Each run is one `bench.throughput` run (no-op jobs
drained by one worker process): its rate, and job_finish_many's database time per 10,000
jobs (pg_stat_statements), which is less noisy than the rate.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime

import psycopg

from bench import server as pg
from bench.common import RESULTS_DIR, Repeated, fmt, progress, say, table
from bench.throughput import Bench, Run

_FINISHED = "WHERE state IN ('succeeded', 'dead', 'cancelled')"
_FINISHED_AT = "ON unbroken.jobs (finished_at) INCLUDE (queue, state)"
# Every index a variant may hold, by name: a variant lists the definitions it wants.
VARIANTS: dict[str, dict[str, str]] = {
    "0009": {
        "jobs_finished_idx": f"{_FINISHED_AT} WHERE finished_at IS NOT NULL",
        "jobs_finished_state_idx": f"ON unbroken.jobs (state, id) {_FINISHED}",
        "jobs_finished_queue_idx": f"ON unbroken.jobs (queue, state, id) {_FINISHED}",
        "jobs_finished_task_idx": f"ON unbroken.jobs (task, state, id) {_FINISHED}",
    },
    # One index by state, the queue and task along (0009 as rewritten).
    "state": {
        "jobs_finished_idx": f"{_FINISHED_AT} WHERE finished_at IS NOT NULL",
        "jobs_finished_state_idx": (
            f"ON unbroken.jobs (state, id) INCLUDE (queue, task) {_FINISHED}"
        ),
    },
    "none": {
        "jobs_finished_idx": f"{_FINISHED_AT} WHERE finished_at IS NOT NULL",
    },
}


def switch(url: str, variant: str) -> None:
    """Drop every variant's index and create `variant`'s (the table is empty: instant)."""
    names = {name for v in VARIANTS.values() for name in v}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE unbroken.jobs")
        for name in sorted(names):
            conn.execute(f"DROP INDEX IF EXISTS unbroken.{name}".encode())
        for name, definition in VARIANTS[variant].items():
            conn.execute(f"CREATE INDEX {name} {definition}".encode())


def finish_ms(run: Run) -> tuple[float, int]:
    """job_finish_many's total database time (ms) and calls in `run`. pg_stat_statements
    normalises its text past what bench.server.fingerprint recognises, so it is also known
    by its first words (no other statement of a no-op run starts so: job_cancel_many, which
    does, is never called) and by writing every job of the run."""
    for s in run.by_statement:
        if s["name"] == "job_finish_many" or (
            s["name"].startswith("WITH locked AS MATERIALIZED") and s["rows"] == run.jobs
        ):
            return float(s["total_ms"]), int(s["calls"])
    return float("nan"), 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.index_cost", description=__doc__)
    parser.add_argument("--variants", default="0009,none", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of every variant")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--kind", default="async", choices=("async", "sync"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}: one of {', '.join(VARIANTS)}")
    server = pg.BenchServer().start()
    bench = Bench.open(server)
    rates = {v: Repeated() for v in variants}
    finish = {v: Repeated(higher_is_better=False) for v in variants}
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        for i in range(args.pairs):
            for v in variants:
                progress(f"round {i + 1}: {v}")
                switch(bench.url, v)
                r = bench.run(args.kind, args.concurrency, 1, args.jobs)
                total, calls = finish_ms(r)
                per_10k = total / args.jobs * 10_000
                rates[v].add(r.rate)
                finish[v].add(per_10k)
                runs[v].append(
                    {
                        "rate": r.rate,
                        "finish_ms_per_10k": per_10k,
                        "finish_calls": calls,
                        "others_cpu_pct": r.cpu["others_cpu_pct"],
                    }
                )
                progress(f"  {r.rate:,.0f} jobs/s, job_finish_many {per_10k:.1f} ms per 10k")
    finally:
        bench.close()
        server.close()
    base = variants[0]
    rows = [
        [
            v,
            fmt(rates[v].median),
            " ".join(fmt(x) for x in rates[v].values),
            f"{rates[v].median / rates[base].median:.2f}",
            fmt(finish[v].median, 1),
            " ".join(fmt(x, 1) for x in finish[v].values),
            f"{finish[v].median / finish[base].median:.2f}",
        ]
        for v in variants
    ]
    say(
        table(
            f"index cost: {args.kind} no-op jobs, 1 worker, concurrency {args.concurrency},"
            f" {args.jobs:,} jobs, {args.pairs} interleaved rounds (ratios to {base})",
            ["variant", "jobs/s median", "runs", "ratio", "finish ms/10k median", "runs", "ratio"],
            rows,
        )
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"index-cost-{datetime.now():%Y%m%d-%H%M%S}.json"
    payload = {
        "args": vars(args),
        "runs": runs,
        "median": {
            v: {"rate": rates[v].median, "finish_ms_per_10k": finish[v].median} for v in variants
        },
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    say(f"written: {out}")


if __name__ == "__main__":
    main()
