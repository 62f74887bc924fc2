"""Flow control's cost: throughput of no-op jobs with no limit keys, with keys whose limits
never bind, and with keys whose limits bind.

python -m bench.limits [--jobs 20000] [--repeat 3] [--concurrency 50]

Every mode enqueues the same jobs through job_insert_many (so the rows differ only in
their limit key) and drains them with one worker process in burst mode; the rate is
measured from the rows as bench/throughput.py measures it. The limits are written into
flow_limits directly (the bench app declares none, so its worker keeps them):
  plain    no limit anywhere and no key: the worker runs the fetch of a database without
           flow control (job_get_available), as before flow control existed
  none     limits registered, no job has a key (the fetch's keyed branch walks an empty index)
  loose    1,000 keys `loose:N`, concurrency 1,000 each: every job is keyed, no limit binds
  binding  20 keys `tight:N`, concurrency 2 each: at most 40 run at once, under the
           worker's 50 slots, so the fetch passes over full keys all the time
Target: loose costs at most 10 % of plain's throughput.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import psycopg

from bench import server as pg
from bench.app import NOOP_ASYNC
from bench.common import Repeated, say
from bench.throughput import Bench
from unbroken.sql import queries

MODES = {
    "plain": (None, 0),
    "none": (None, 0),
    "loose": ("loose", 1000),
    "binding": ("tight", 20),
}
LIMITS = "INSERT INTO unbroken.flow_limits (name, concurrency) VALUES ('loose', 1000), ('tight', 2)"


class LimitsBench(Bench):
    mode: str = "none"

    def refill(self, kind: str, jobs: int) -> None:
        prefix, keys = MODES[self.mode]
        payload = json.dumps({"args": [], "kwargs": {}})
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE unbroken.jobs, unbroken.stats_minutely, unbroken.workers,"
                " unbroken.leaders, unbroken.limit_keys, unbroken.flow_limits"
            )
            if self.mode != "plain":
                conn.execute(LIMITS)
            step = 10_000
            for start in range(0, jobs, step):
                n = min(step, jobs - start)
                conn.execute(
                    queries()["job_insert_many"],
                    {
                        "queues": ["default"] * n,
                        "tasks": [NOOP_ASYNC] * n,
                        "args": [payload] * n,
                        "priorities": [0] * n,
                        "run_ats": [None] * n,
                        "max_attempts": [5] * n,
                        "unique_keys": [None] * n,
                        "limit_keys": [
                            None if prefix is None else f"{prefix}:{(start + i) % keys}"
                            for i in range(n)
                        ],
                    },
                )
            conn.execute("ANALYZE unbroken.jobs")
            conn.execute("CHECKPOINT")
        pg.wait_no_backends(self.server.admin_url, self.db)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    server = pg.BenchServer().start()
    try:
        bench = LimitsBench.open(server)
        rates = {mode: Repeated() for mode in MODES}
        try:
            for _ in range(args.repeat):  # modes interleaved: drift hits them alike
                for mode in MODES:
                    bench.mode = mode
                    run = bench.run("async", args.concurrency, 1, args.jobs)
                    rates[mode].values.append(run.rate)
                    say(f"{mode:8} {run.rate:8.0f} jobs/s")
        finally:
            bench.close()
    finally:
        server.close()
    base = max(rates["plain"].values)
    for mode, rate in rates.items():
        best = max(rate.values)
        say(
            f"{mode:8} best {best:8.0f} jobs/s, runs {[round(v) for v in rate.values]},"
            f" {100 * (best / base - 1):+.1f} % vs plain"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
