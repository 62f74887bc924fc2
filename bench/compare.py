"""unbroken against PGQueuer 1.6 in back-to-back pairs, on the same server in the same run.

After each side's sweep has found its best configuration (unbroken: the concurrency; PGQueuer:
the driver and batch size), the two are run in pairs, one right after the other (the order
alternates), with one worker process each and then two each. The ratio of each pair is taken
under about the same background load, which on a shared 2-core machine is what makes the
ratio trustworthy; the median of the pair ratios is the figure.
"""

from __future__ import annotations

from typing import Any

from bench import server as pg
from bench.common import Repeated, fmt, median, progress, say, table
from bench.pgqueuer_bench import PgqBench
from bench.throughput import Bench

TARGET = 1.5
AIM = 2.0


def verdict(ratio: float) -> str:
    return "MET (2x)" if ratio >= AIM else "MET" if ratio >= TARGET else "MISSED"


def run_section(
    server: pg.BenchServer,
    throughput: dict[str, Any],
    pgqueuer: dict[str, Any],
    *,
    jobs: int,
    repeat: int,
) -> dict[str, Any]:
    concurrency = int(throughput["one_worker"]["async"]["best_concurrency"])
    driver = str(pgqueuer["best"]["driver"])
    batch = int(pgqueuer["best"]["batch_size"])
    ub = Bench.open(server)
    pq = PgqBench(server)
    out: dict[str, Any] = {
        "unbroken": {"tasks": "async", "concurrency": concurrency},
        "pgqueuer": {"driver": driver, "batch_size": batch, "version": pq.version},
    }
    rows = []
    try:
        for workers in (1, 2):
            ours, theirs = Repeated(), Repeated()
            ratios: list[float] = []
            for rep in range(repeat):
                progress(f"pair {rep + 1}: unbroken vs PGQueuer, {workers} worker(s) each")
                if rep % 2 == 0:
                    a = ub.run("async", concurrency, workers, jobs).rate
                    b = pq.run(driver, batch, workers, jobs).rate
                else:
                    b = pq.run(driver, batch, workers, jobs).rate
                    a = ub.run("async", concurrency, workers, jobs).rate
                ours.add(a)
                theirs.add(b)
                ratios.append(a / b)
            ratio = median(ratios)
            out[f"{workers}_workers"] = {
                "unbroken": ours.as_json(),
                "pgqueuer": theirs.as_json(),
                "pair_ratios": ratios,
                "ratio_median": ratio,
                "ratio_best": max(ratios),
            }
            rows.append(
                [
                    str(workers),
                    fmt(ours.median),
                    fmt(ours.best),
                    fmt(theirs.median),
                    fmt(theirs.best),
                    ", ".join(f"{r:.2f}" for r in ratios),
                    f"{ratio:.2f}x",
                    verdict(ratio),
                ]
            )
    finally:
        ub.close()
    say(
        table(
            f"unbroken (async no-op, concurrency {concurrency}) vs PGQueuer {pq.version.split()[0]}"
            f" ({driver}, batch {batch}), {jobs:,} jobs, back-to-back pairs (target >= "
            f"{TARGET}x, aim {AIM}x)",
            [
                "workers each",
                "unbroken median",
                "unbroken best",
                "PGQueuer median",
                "PGQueuer best",
                "pair ratios",
                "median ratio",
                "target",
            ],
            rows,
        )
    )
    return out
