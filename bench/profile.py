"""Where a worker's time goes: one throughput run under py-spy (sampling, every thread).

    python -m bench.profile --kind async --concurrency 500 [--jobs 20000] [--idle]

py-spy is installed into bench/.venv-pgqueuer (the benchmark-only virtualenv) on first use;
it attaches from outside, so the worker runs exactly as in the benchmark. Prints the
functions that were on CPU most (self time) and the runtime's own functions by inclusive
time, counted over the samples where the thread was not idle (py-spy's default: idle
samples are dropped) and not importing modules (start-up), plus the database side from
pg_stat_statements. `--idle` keeps idle samples too (where threads wait). The raw
collapsed stacks stay in the file it names.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench import pgqueuer_bench
from bench.common import fmt, say, table
from bench.procs import spawn, worker_env
from bench.server import BenchServer
from bench.throughput import Bench


def ensure_py_spy() -> Path:
    pgqueuer_bench.ensure_venv()
    exe = pgqueuer_bench.VENV / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run(
            [str(pgqueuer_bench.venv_python()), "-m", "pip", "install", "-q", "py-spy"],
            check=True,
        )
    return exe


def summarise(raw: Path, top: int = 25) -> str:
    """Self and inclusive samples per function of the event-loop thread, and per thread.

    The worker's own work runs on its main thread (the event loop); other threads are the
    sync tasks' pool, psycopg_pool's and the deadline watchdog, mostly waiting.
    """
    stacks: list[tuple[str, list[str], int]] = []
    main_tid = ""
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if len(frames) < 2 or not count_text.isdigit():
            continue
        tid = frames[0].split(")")[0]  # "thread (1234" with or without its name
        if frames[0].endswith("MainThread"):
            main_tid = tid
        if any("importlib._bootstrap" in f for f in frames):
            continue  # start-up: imports are not the worker's steady state
        stacks.append((tid, frames[1:], int(count_text)))
    per_thread: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for tid, frames, count in stacks:
        per_thread[tid] += count
        if tid != main_tid:
            continue
        total += count
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
    total = max(total, 1)
    rows = [[name, fmt(n), f"{n / total:.1%}"] for name, n in own.most_common(top)]
    parts = [
        table(
            f"py-spy: event-loop thread, self time ({total:,} samples on CPU; other threads: "
            + ", ".join(f"{t.split('(')[-1]}={n}" for t, n in per_thread.items() if t != main_tid)
            + ")",
            ["function", "samples", "%"],
            rows,
        )
    ]
    ours = [(n, c) for n, c in inclusive.items() if "unbroken/" in n or "psycopg" in n]
    ours.sort(key=lambda item: -item[1])
    rows = [[name, fmt(n), f"{n / total:.1%}"] for name, n in ours[:top]]
    parts.append(
        table(
            "py-spy: event-loop thread, unbroken's and psycopg's functions, inclusive",
            ["function", "samples", "%"],
            rows,
        )
    )
    return "\n".join(parts)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file-ish path:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--kind", default="async", choices=["async", "sync"])
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--idle", action="store_true", help="keep idle samples")
    args = p.parse_args(argv)
    py_spy = ensure_py_spy()
    server = BenchServer().start()
    raw = Path(tempfile.mkdtemp(prefix="unbroken-profile-")) / "worker.collapsed"
    try:
        bench = Bench.open(server)
        bench.refill(args.kind, args.jobs)
        before = bench.statements_now()
        argv_worker = [
            "record", "--format", "raw", "--threads", "--rate", str(args.rate),
            "-o", str(raw), *(["--idle"] if args.idle else []), "--",
            sys.executable, "-m", "bench.worker", "--concurrency", str(args.concurrency),
            "--burst",
        ]  # fmt: skip
        proc = spawn(
            "profiled", argv_worker, env=worker_env(bench.url, "bench-w1"), python=str(py_spy)
        )
        proc.wait(600)
        seconds, _ = bench.elapsed(args.jobs)
        say(f"{args.jobs:,} {args.kind} jobs at concurrency {args.concurrency}: "
            f"{args.jobs / seconds:,.0f} jobs/s under py-spy ({seconds:.2f} s)")  # fmt: skip
        say(summarise(raw))
        say(bench.statement_table(before, seconds))
        bench.close()
    finally:
        server.close()
    say(f"\ncollapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
