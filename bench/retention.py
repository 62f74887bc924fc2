"""Retention at scale: what millions of finished jobs cost, and how fast they are pruned.

    python -m bench.retention                      # all three parts (about 10 minutes)
    python -m bench.retention --only finished --finished 5000000

- finished: throughput (a burst worker draining `--jobs` jobs) and enqueue-to-start latency
  (bench/latency.py's run, one job at a time) on an empty table and on one keeping
  `--finished` finished jobs (finished one to six days ago, inside the default 7-day
  retention, loaded with one INSERT ... SELECT generate_series), in back-to-back pairs,
  side by side with ratios.
- prune: a backlog of `--backlog` finished jobs past the retention; a worker runs `--jobs`
  jobs while its leader prunes the backlog. Rows deleted per second by the leader's loop,
  the worker's jobs/s during it against the same run without a backlog, and the rate of
  the `unbroken prune` loop (OperatorStore.prune) alone.
- churn: `--churn` jobs in rounds of `--round`: enqueue, drain, prune everything finished;
  the table's and its indexes' size after each round (flat when autovacuum keeps up).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from bench import latency
from bench import server as pg
from bench.app import BenchApp, build
from bench.common import Results, fmt, median, progress, say, table
from bench.cpu import wait_for_quiet
from bench.procs import start_worker
from unbroken.db._sync.pool import Database
from unbroken.ops.store import OperatorStore
from unbroken.settings import load_settings
from unbroken.states import FINAL

DB = "bench_retention"
DAY = 86_400
SEED = """
INSERT INTO unbroken.jobs (task, state, attempt, created_at, attempted_at, finished_at, result)
SELECT 'bench.seed', (ARRAY['succeeded', 'succeeded', 'succeeded', 'dead', 'cancelled'])
           [1 + g %% 5]::unbroken.job_state,
       1, f - interval '1 second', f - interval '1 second', f, 'null'::jsonb
FROM (SELECT g, now() - make_interval(secs => %(from_s)s + (g %% %(spread_s)s)) AS f
      FROM generate_series(1, %(n)s) AS g) AS s
"""
RUN_JOBS = "SELECT count(*) FROM unbroken.jobs WHERE task <> 'bench.seed' AND state = 'succeeded'"
RATE = (
    "SELECT count(*), extract(epoch FROM max(finished_at) - min(attempted_at))::float8"
    " FROM unbroken.jobs WHERE task <> 'bench.seed'"
)
RESET = (
    b"DELETE FROM unbroken.jobs WHERE task <> 'bench.seed';"
    b" TRUNCATE unbroken.workers, unbroken.leaders"
)
SIZES = (
    "SELECT pg_table_size('unbroken.jobs'), pg_indexes_size('unbroken.jobs'),"
    " (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'unbroken.jobs'::regclass),"
    " (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'unbroken.jobs'::regclass)"
)


def seed(url: str, n: int, from_s: float, spread_s: int = 5 * DAY) -> float:
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED, {"n": n, "from_s": from_s, "spread_s": spread_s})
        conn.execute("VACUUM (ANALYZE) unbroken.jobs")
        conn.execute("CHECKPOINT")
    return time.monotonic() - started


def throughput(bapp: BenchApp, url: str, jobs: int, concurrency: int) -> float:
    """A burst worker drains `jobs` jobs; jobs/s from the first claim to the last finish."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RESET)
    task = bapp.task("async")
    for start in range(0, jobs, 10_000):
        bapp.app.enqueue_many(task.job() for _ in range(min(10_000, jobs - start)))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE unbroken.jobs")
        conn.execute("CHECKPOINT")
    wait_for_quiet()
    worker = start_worker(url, "bench-ret", concurrency, burst=True)
    code = worker.wait(timeout=600)
    if code != 0:
        raise RuntimeError(f"worker exited {code}; log {worker.log}\n{worker.log_tail()}")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(RATE).fetchone()
    assert row is not None
    assert row[0] == jobs, row
    return float(jobs) / float(row[1])


def part_finished(
    server: pg.BenchServer, finished: int, jobs: int, concurrency: int, samples: int, repeat: int
) -> dict[str, Any]:
    """Two databases, one empty and one with `finished` finished jobs; each pair of runs
    measures both back to back (alternating which goes first), so a busy moment of the
    machine weighs on both sides of a ratio alike."""
    sides = {"empty": 0, f"{finished:,} finished": finished}
    apps: dict[str, tuple[BenchApp, str]] = {}
    figures: dict[str, dict[str, list[float]]] = {}
    try:
        for i, (label, rows) in enumerate(sides.items()):
            url = server.fresh_database(f"{DB}_{i}")
            bapp = build(database_url=url, application_name="bench-enqueue")
            bapp.app.migrate()
            apps[label] = (bapp, url)
            if rows:
                progress(f"finished: loading {rows:,} finished jobs")
                progress(f"finished: loaded in {seed(url, rows, DAY):.0f} s")
            figures[label] = {"jobs_per_s": [], "p50_ms": [], "p99_ms": []}
        for rep in range(repeat):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for label in order:
                progress(f"finished: pair {rep + 1}, {label}")
                bapp, url = apps[label]
                got = figures[label]
                got["jobs_per_s"].append(throughput(bapp, url, jobs, concurrency))
                lat = latency.run_once(bapp, url, samples, 1, reset=RESET)["call_to_start_ms"]
                got["p50_ms"].append(lat["p50"])
                got["p99_ms"].append(lat["p99"])
    finally:
        for bapp, _ in apps.values():
            bapp.app.close()
    (empty, full) = figures.values()
    rows_out = []
    for key, label in (
        ("jobs_per_s", f"throughput, jobs/s (c={concurrency})"),
        ("p50_ms", "enqueue -> start p50, ms"),
        ("p99_ms", "enqueue -> start p99, ms"),
    ):
        a, b = median(empty[key]), median(full[key])
        ratios = sorted(y / x for x, y in zip(empty[key], full[key], strict=True))
        spread = f"{ratios[0]:.2f} to {ratios[-1]:.2f}"
        rows_out.append([label, fmt(a, 2), fmt(b, 2), f"{b / a:.3f}", spread])
    names = list(figures)
    say(
        table(
            f"{names[1]} jobs kept vs an empty table (medians of {repeat} back-to-back pairs)",
            ["figure", names[0], names[1], "ratio", "pairs' ratios"],
            rows_out,
        )
    )
    return {"finished": finished, "jobs": jobs, "concurrency": concurrency, "runs": figures}


def _backlog(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM unbroken.jobs WHERE finished_at < now() - interval '7 days'"
        ).fetchone()
    return int(row[0]) if row else 0


def part_prune(server: pg.BenchServer, backlog: int, jobs: int, concurrency: int) -> dict[str, Any]:
    url = server.fresh_database(DB)
    bapp = build(database_url=url, application_name="bench-enqueue")
    bapp.app.migrate()
    try:
        progress("prune: worker throughput without a backlog")
        alone = throughput(bapp, url, jobs, concurrency)
        progress(f"prune: loading a backlog of {backlog:,} jobs past the retention")
        seed(url, backlog, 8 * DAY, spread_s=DAY)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(RESET)
        task = bapp.task("async")
        for start in range(0, jobs, 10_000):
            bapp.app.enqueue_many(task.job() for _ in range(min(10_000, jobs - start)))
        wait_for_quiet()
        worker = start_worker(url, "bench-prune", concurrency, burst=False)
        started = time.monotonic()
        worker.wait_ready()
        drained_at = pruned_at = None
        while pruned_at is None or drained_at is None:
            time.sleep(0.2)
            if drained_at is None:
                with psycopg.connect(url, autocommit=True) as conn:
                    row = conn.execute(RUN_JOBS).fetchone()
                if row and row[0] == jobs:
                    drained_at = time.monotonic()
            if pruned_at is None and _backlog(url) == 0:
                pruned_at = time.monotonic()
            if time.monotonic() - started > 900:
                raise RuntimeError("prune: not done within 15 minutes")
        worker.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(RATE).fetchone()
        assert row is not None
        during = float(jobs) / float(row[1])
        loop_rate = backlog / (pruned_at - started)

        progress(f"prune: `unbroken prune`'s loop alone on {backlog:,} jobs")
        seed(url, backlog, 8 * DAY, spread_s=DAY)
        settings = load_settings(database_url=url)
        database = Database(url, settings)
        pool = database.pool("cli", min_size=0, max_size=1)
        database.open("cli")
        try:
            t0 = time.monotonic()
            run = OperatorStore(pool).prune(7 * DAY, tuple(FINAL), settings.prune_batch)
            cli_rate = run.total / (time.monotonic() - t0)
        finally:
            database.close()
    finally:
        bapp.app.close()
    say(
        table(
            f"pruning a backlog of {backlog:,} finished jobs while a worker runs {jobs:,} jobs",
            ["figure", "value"],
            [
                ["the leader's loop, rows deleted/s (while the worker runs)", fmt(loop_rate)],
                ["worker jobs/s without a backlog", fmt(alone)],
                ["worker jobs/s while the leader prunes", fmt(during)],
                ["ratio", f"{during / alone:.3f}"],
                ["`unbroken prune` loop alone, rows deleted/s", fmt(cli_rate)],
            ],
        )
    )
    return {
        "backlog": backlog,
        "jobs": jobs,
        "leader_rows_per_s": loop_rate,
        "jobs_per_s_alone": alone,
        "jobs_per_s_while_pruning": during,
        "cli_rows_per_s": cli_rate,
    }


def part_churn(
    server: pg.BenchServer, churn: int, round_jobs: int, concurrency: int, naptime: float
) -> dict[str, Any]:
    url = server.fresh_database(DB)
    # A round here puts 100,000 jobs through in seconds, about 50 times the rate of 20M a
    # day: with the default one-minute naptime autovacuum would not even look at the table
    # during the run. docs/retention.md recommends 10-15 s under heavy churn; the bench
    # runs with `naptime` so what it shows is autovacuum keeping up, or not.
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET autovacuum_naptime = '{int(naptime)}s'".encode())
        conn.execute("SELECT pg_reload_conf()")
    bapp = build(database_url=url, application_name="bench-enqueue")
    bapp.app.migrate()
    settings = load_settings(database_url=url)
    database = Database(url, settings)
    pool = database.pool("cli", min_size=0, max_size=1)
    database.open("cli")
    rounds: list[list[Any]] = []
    try:
        store = OperatorStore(pool)
        for i in range(max(1, churn // round_jobs)):
            progress(f"churn: round {i + 1}, {round_jobs:,} jobs")
            throughput(bapp, url, round_jobs, concurrency)
            store.prune(0.0, tuple(FINAL), settings.prune_batch)
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(SIZES).fetchone()
            assert row is not None
            rounds.append([(i + 1) * round_jobs, row[0], row[1], row[2], row[3]])
    finally:
        database.close()
        bapp.app.close()
    mb = 1024 * 1024
    say(
        table(
            f"{churn:,} jobs through the table in rounds of {round_jobs:,}, all pruned each"
            f" round (autovacuum_naptime {naptime:g} s)",
            ["jobs so far", "heap MiB", "indexes MiB", "dead tuples", "autovacuums"],
            [[fmt(r[0]), fmt(r[1] / mb, 1), fmt(r[2] / mb, 1), fmt(r[3]), r[4]] for r in rounds],
        )
    )
    return {"round_jobs": round_jobs, "naptime": naptime, "rounds": rounds}


PARTS = ("finished", "prune", "churn")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    p.add_argument("--only", action="append", choices=PARTS)
    p.add_argument("--finished", type=int, default=5_000_000)
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--samples", type=int, default=300, help="latency jobs per run")
    p.add_argument("--repeat", type=int, default=5, help="pairs of runs (finished)")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--backlog", type=int, default=1_000_000)
    p.add_argument("--churn", type=int, default=1_000_000)
    p.add_argument("--naptime", type=float, default=10.0, help="autovacuum_naptime, seconds")
    p.add_argument("--round", type=int, default=100_000)
    args = p.parse_args(argv)
    results = Results(list(argv or []))
    server = pg.BenchServer().start()
    try:
        for part in args.only or PARTS:
            if part == "finished":
                payload = part_finished(
                    server, args.finished, args.jobs, args.concurrency, args.samples, args.repeat
                )
            elif part == "prune":
                payload = part_prune(server, args.backlog, args.jobs * 4, args.concurrency)
            else:
                payload = part_churn(server, args.churn, args.round, args.concurrency, args.naptime)
            results.section(f"retention.{part}", payload)
    finally:
        server.close()
    say(f"results: {results.write()}")


if __name__ == "__main__":
    main()
