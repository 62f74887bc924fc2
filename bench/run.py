"""`make bench`: every benchmark part, one table per section, one JSON file in bench/results/.

    python -m bench.run                          # everything (about 15 minutes on 2 cores)
    python -m bench.run --only throughput        # one part (repeatable: --only a --only b)
    python -m bench.run --skip pgqueuer --quick  # fewer runs, fewer concurrencies
    make bench BENCH_ARGS="--only latency --repeat 5"

Parts: throughput (one and two worker processes, database cost, sessions), pgqueuer
(PGQueuer 1.6 side by side; with throughput also run, the two are then compared in
back-to-back pairs), floor (the SQL floor), enqueue, latency, reconnect, takeover (the
leader killed or frozen), chunks (bench/chunks.py, when present: its `run_section(server)`
is called if it has one, else it runs as `python -m bench.chunks`), cdc (bench/cdc.py, on a
server of its own with wal_level=logical). A throwaway server is
started for the run unless `--embedded` says to use the embedded default server. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import (
    cdc,
    compare,
    cpu,
    enqueue,
    floor,
    latency,
    pgqueuer_bench,
    reconnect,
    takeover,
    throughput,
)
from bench.common import ROOT, Results, fmt, progress, say, table, verdict
from bench.server import BenchServer

PARTS = (
    "throughput", "pgqueuer", "floor", "enqueue", "latency", "reconnect", "takeover", "chunks",
    "cdc",
)  # fmt: skip


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part")
    p.add_argument("--skip", action="append", choices=PARTS, default=[], help="skip this part")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="use the embedded default server instead of a throwaway one "
        "(no pg_stat_statements or commit timestamps unless it was started with them)",
    )
    p.add_argument("--jobs", type=int, default=20_000, help="jobs per throughput run")
    p.add_argument("--concurrency", type=_ints, default=_ints("10,50,100,200,500,1000"))
    p.add_argument("--kinds", type=_words, default=["async", "sync"], help="async,sync")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (best and median)")
    p.add_argument("--no-two-workers", action="store_true")
    p.add_argument(
        "--pairs", type=int, default=5, help="back-to-back pairs per comparison (ratio figures)"
    )
    p.add_argument("--pgq-batch", type=_ints, default=_ints("100,1000"))
    p.add_argument("--pgq-drivers", type=_words, default=["asyncpg", "psycopg"])
    p.add_argument("--floor-batch", type=_ints, default=_ints("100,500,1000"))
    p.add_argument("--enqueue-single", type=int, default=3_000, help="jobs per single loop")
    p.add_argument("--enqueue-bulk", type=int, default=100_000, help="jobs per bulk figure")
    p.add_argument("--cdc-changes", type=int, default=200_000, help="row changes for cdc")
    p.add_argument("--enqueue-batch", type=_ints, default=_ints("1000,10000"))
    # 1,000 jobs a run: a p99 of 300 would be the third-worst job alone.
    p.add_argument("--latency-samples", type=int, default=1000)
    p.add_argument("--latency-concurrency", type=int, default=100)
    p.add_argument("--reconnect-repeat", type=int, default=5)
    p.add_argument("--takeover-repeat", type=int, default=5, help="runs per takeover case")
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=cpu.QUIET.threshold,
        help="CPU %% of one core other processes may use during a run before it is measured "
        "again (the machine is shared)",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=cpu.QUIET.wait, help="most seconds to wait per run"
    )
    p.add_argument(
        "--quiet-budget",
        type=float,
        default=cpu.QUIET.budget,
        help="most seconds to wait for quiet over the whole benchmark",
    )
    p.add_argument(
        "--quiet-attempts", type=int, default=cpu.QUIET.attempts, help="tries of a noisy run"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer jobs and runs")
    p.add_argument("--json", help="results file (default bench/results/bench-<time>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.jobs = min(args.jobs, 5_000)
        args.concurrency = [100, 500]
        args.repeat = 1
        args.pgq_batch = [1000]
        args.pgq_drivers = ["asyncpg"]
        args.floor_batch = [1000]
        args.enqueue_single = 500
        args.enqueue_bulk = 20_000
        args.cdc_changes = 50_000
        args.latency_samples = 100
        args.reconnect_repeat = 1
        args.takeover_repeat = 1
        args.pairs = 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM unwinds like Ctrl-C, so the throwaway servers are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpu.QUIET.threshold = args.quiet_threshold
    cpu.QUIET.wait = args.quiet_wait
    cpu.QUIET.attempts = args.quiet_attempts
    cpu.QUIET.budget = args.quiet_budget
    wanted = [p for p in (args.only or PARTS) if p not in args.skip]
    results = Results(sys.argv[1:] if argv is None else list(argv))
    out_path = results.path() if args.json is None else Path(args.json)
    say(f"unbroken benchmarks: {', '.join(wanted)} ({results.data['machine'].get('cores')} cores)")
    sections = results.data["sections"]

    def save() -> None:
        written = results.write(out_path)
        progress(f"results so far in {written}")

    server: BenchServer | None = None
    # chunks too: without a server it would run on the embedded default one (and start it).
    needs_server = ("throughput", "pgqueuer", "floor", "enqueue", "latency", "takeover", "chunks")
    if any(p in wanted for p in needs_server):
        server = BenchServer(embedded=args.embedded).start()
        conf = server.settings_report()
        results.section("server", conf)
        say(table("server", ["setting", "value"], [[k, v] for k, v in conf.items()]))
    try:
        steps: list[tuple[str, Callable[[], dict[str, Any] | None]]] = []
        if server is not None:
            srv = server
            steps += [
                (
                    "throughput",
                    lambda: throughput.run_section(
                        srv,
                        jobs=args.jobs,
                        concurrencies=args.concurrency,
                        kinds=args.kinds,
                        repeat=args.repeat,
                        two_workers=not args.no_two_workers,
                        pairs=args.pairs,
                    ),
                ),
                (
                    "pgqueuer",
                    lambda: pgqueuer_bench.run_section(
                        srv,
                        jobs=args.jobs,
                        batch_sizes=args.pgq_batch,
                        drivers=args.pgq_drivers,
                        repeat=args.repeat,
                    ),
                ),
                (
                    "floor",
                    lambda: floor.run_section(
                        srv, jobs=args.jobs, batches=args.floor_batch, repeat=args.repeat
                    ),
                ),
                (
                    "enqueue",
                    lambda: enqueue.run_section(
                        srv,
                        single_jobs=args.enqueue_single,
                        bulk_jobs=args.enqueue_bulk,
                        batches=args.enqueue_batch,
                        repeat=args.repeat,
                    ),
                ),
                (
                    "latency",
                    lambda: latency.run_section(
                        srv,
                        samples=args.latency_samples,
                        concurrency=args.latency_concurrency,
                        repeat=args.repeat,
                    ),
                ),
                ("takeover", lambda: takeover.run_section(srv, repeat=args.takeover_repeat)),
            ]
        steps += [
            (
                "reconnect",
                lambda: reconnect.run_section(sizes=[1, 4, 16], repeat=args.reconnect_repeat),
            ),
            ("chunks", lambda: run_chunks(server)),
            ("cdc", lambda: cdc.run_section(changes=args.cdc_changes, repeat=args.repeat)),
        ]
        for name, step in steps:
            if name not in wanted:
                continue
            started = time.monotonic()
            try:
                payload = step()
            except Exception as exc:
                say(f"\n!! {name} failed: {type(exc).__name__}: {exc}")
                sections[name] = {"error": f"{type(exc).__name__}: {exc}"}
                save()
                continue
            if payload is not None:
                payload["section_seconds"] = round(time.monotonic() - started, 1)
                sections[name] = payload
            if name == "pgqueuer" and payload and "best" in payload and server is not None:
                tp = sections.get("throughput", {})
                if "one_worker" in tp and "async" in tp["one_worker"]:
                    progress("unbroken vs PGQueuer in back-to-back pairs")
                    sections["comparison"] = compare.run_section(
                        server, tp, payload, jobs=args.jobs, repeat=args.pairs
                    )
            if name == "floor" and "throughput" in sections and payload is not None:
                text, data = floor.fraction_table(sections["throughput"], payload)
                say(text)
                sections["floor_fraction"] = data
            save()
    finally:
        if server is not None:
            server.close()
    results.data["quiet"] = {
        "threshold_pct": cpu.QUIET.threshold,
        "seconds_waited": round(cpu.QUIET.waited, 1),
    }
    say(summary(sections))
    say(
        f"\nwaited {cpu.QUIET.waited:.0f} s in all for other processes to quiet down; runs marked"
        f" '!' had others above {cpu.QUIET.threshold:g}% of a core"
    )
    say(f"results: {out_path}")
    save()
    return 0


def run_chunks(server: BenchServer | None) -> dict[str, Any] | None:
    """bench/chunks.py (another benchmark's file), when it exists."""
    if importlib.util.find_spec("bench.chunks") is None:
        progress("chunks: bench/chunks.py is not there; skipped")
        return None
    module = importlib.import_module("bench.chunks")
    section = getattr(module, "run_section", None)
    if callable(section) and server is not None:
        result = section(server)
        return result if isinstance(result, dict) else {"result": result}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chunks"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    return {"exit_code": proc.returncode}


def summary(sections: dict[str, Any]) -> str:
    """Every target of the issue next to the figure measured."""
    rows: list[list[str]] = []
    comp = sections.get("comparison", {})
    for workers in (1, 2):
        key = f"{workers}_workers"
        if key in comp:
            r = comp[key]["ratio_median"]
            rows.append(
                [
                    f"vs PGQueuer 1.6, {workers} worker(s) each (async)",
                    ">= 1.5x (aim 2x)",
                    f"{r:.2f}x median of pairs (best {comp[key]['ratio_best']:.2f}x)",
                    compare.verdict(r),
                ]
            )
    tp = sections.get("throughput", {})
    for kind, two in tp.get("two_workers", {}).items():
        rows.append(
            [
                f"2 workers vs 1, {kind}",
                f">= {throughput.TARGET_TWO_WORKERS}x",
                f"{two['ratio_median']:.2f}x median of pairs (best {two['ratio_best']:.2f}x)",
                verdict(two["ratio_median"] >= throughput.TARGET_TWO_WORKERS),
            ]
        )
    for kind, one in tp.get("one_worker", {}).items():
        c = one["best_concurrency"]
        rate = one["by_concurrency"][str(c)]
        rows.append([f"throughput, 1 worker, {kind} (c={c})", "-", _rate(rate), "-"])
    for kind, cost in tp.get("db_cost", {}).items():
        rows.append(
            [
                f"transactions per job, steady, {kind}",
                f"<= {throughput.TARGET_XACTS_PER_JOB}",
                fmt(cost["xacts_per_job_steady"], 4),
                verdict(cost["met"]),
            ]
        )
        for name, sess in cost["sessions"].items():
            runtime = sess["peak_without_listener"]
            listener = sess["peak_by_role"].get("listener", 0)
            rows.append(
                [
                    f"sessions of {name}, {kind}",
                    f"<= {throughput.TARGET_CONNECTIONS} + listener",
                    f"{runtime} + {listener} listener",
                    verdict(runtime <= throughput.TARGET_CONNECTIONS and listener <= 1),
                ]
            )
    enq = sections.get("enqueue", {})
    bulk = {k: v for k, v in enq.items() if k.startswith("app.enqueue_many")}
    if bulk:
        name, best = max(bulk.items(), key=lambda kv: kv[1]["median"])
        rows.append(
            [
                f"enqueue_many ({name.split(', ')[-1]})",
                f">= {enqueue.TARGET_BULK:,}/s",
                _rate(best),
                verdict(best["median"] >= enqueue.TARGET_BULK),
            ]
        )
    lat = sections.get("latency", {})
    if "p99_median_of_runs" in lat:
        p99 = lat["p99_median_of_runs"]
        rows.append(
            [
                "enqueue-to-start p99 (idle worker)",
                f"<= {latency.TARGET_P99_MS:g} ms",
                f"{p99:.2f} ms (p50 {lat['best']['call_to_start_ms']['p50']:.2f})",
                verdict(p99 <= latency.TARGET_P99_MS),
            ]
        )
    frac = sections.get("floor_fraction", {})
    for kind, f in frac.items():
        rows.append([f"share of the SQL floor, {kind}", "-", f"{f['median']:.0%}", "-"])
    rec = sections.get("reconnect", {}).get("runs", {})
    if rec:
        medians = {
            label: _median([r["first_good_after_up_s"] for r in runs])
            for label, runs in rec.items()
        }
        worst_label = max(medians, key=lambda label: medians[label])
        worst = medians[worst_label]
        rows.append(
            [
                "restart to first good connection",
                f"< {reconnect.TARGET_SECONDS:g} s",
                f"worst median {worst:.3f} s ({worst_label})",
                verdict(worst < reconnect.TARGET_SECONDS),
            ]
        )
    cdc_figures = sections.get("cdc", {})
    for key, what in (
        ("pipeline_changes_s", "pipeline + mirror"),
        ("pipeline_5000_changes_s", "pipeline + mirror, 5,000 per chunk"),
        ("batched_5000_changes_s", "pipeline + unnest sink writes, 5,000 per chunk"),
    ):
        if key in cdc_figures:
            figure = cdc_figures[key]
            rows.append(
                [
                    f"cdc changes/s ({what})",
                    f">= {cdc.GOAL:,}/s",
                    _rate(figure),
                    verdict(figure["median"] >= cdc.GOAL),
                ]
            )
    for case, data in sections.get("takeover", {}).get("cases", {}).items():
        rows.append(
            [
                f"leader takeover, {case}",
                f"<= {takeover.TARGET_SECONDS:g} s",
                f"{data['takeover_median_s']:.2f} s median, {data['takeover_max_s']:.2f} s max",
                verdict(data["takeover_max_s"] <= takeover.TARGET_SECONDS),
            ]
        )
    return table(
        "targets (issue 3, issue 2 for reconnect, issue 11 for takeover)",
        ["figure", "target", "measured", "verdict"],
        rows,
    )


def _rate(r: dict[str, Any]) -> str:
    return f"{fmt(r['median'])}/s median, {fmt(r['best'])}/s best"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    raise SystemExit(main())
