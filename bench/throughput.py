"""Throughput: 20,000 no-op jobs drained by real worker processes, at several concurrencies.

Each run: the queue is emptied and refilled with `jobs` jobs (enqueue_many, not measured),
ANALYZEd and CHECKPOINTed; then the worker process(es) start in burst mode and exit when
no job is left. The rate is jobs / (commit time of the last outcome - time the first job
was claimed), both read from the database (pg_xact_commit_timestamp of the rows' xmin and
attempted_at), so process start-up and shutdown are not in it.

Around each run we read pg_stat_database (transactions) and pg_stat_statements (calls per
statement), and sample pg_stat_activity every 10 ms for the sessions of each worker process
(told apart by application_name `bench-wN:role`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from bench import server as pg
from bench.app import BenchApp, build
from bench.common import Repeated, fmt, median, progress, say, table, verdict
from bench.cpu import QUIET, CpuWindow, quietest, wait_for_quiet
from bench.procs import Proc, start_worker

# Statements a worker issues on a timer or per batch (its steady state), by query name.
RECURRING = (
    "job_get_available",
    "job_finish_many",
    "lease_renew_many",
    "leader_attempt_elect",
    "job_rescue_expired",
    "job_promote_due",
    "job_prune_finished",
    "worker_prune_silent",
)
TARGET_XACTS_PER_JOB = 0.02
TARGET_CONNECTIONS = 3  # per worker process, plus its listener
TARGET_TWO_WORKERS = 1.8
DB = "bench_unbroken"


@dataclass
class Run:
    kind: str
    workers: int
    concurrency: int
    jobs: int
    seconds: float
    rate: float
    end_source: str
    xacts: int
    statements: int
    recurring_statements: int
    by_statement: list[dict[str, Any]]
    sessions: dict[str, dict[str, Any]]
    worker_cpu_seconds: float  # whole process lifetimes, start-up included
    run_cpu_seconds: float  # from "started" to exit, summed over the workers
    run_wall_seconds: float  # from "started" to exit, the longest worker
    cpu: dict[str, float]  # the machine's CPU while the workers lived (bench.cpu)

    @property
    def cpu_percent(self) -> float:
        """CPU of the worker process(es) while they ran, in % of one core."""
        return self.run_cpu_seconds / self.run_wall_seconds * 100

    @property
    def cores_used(self) -> float:
        """Cores the run kept busy while jobs ran: server and workers' CPU seconds over the
        jobs' window. The server's includes its background processes, so a little high."""
        server_s = self.cpu["server_cpu_pct"] / 100 * self.cpu["wall_s"]
        return (server_s + self.run_cpu_seconds) / self.seconds

    @property
    def fetch_batch(self) -> float:
        return _batch(self.by_statement, "job_get_available")

    @property
    def finish_batch(self) -> float:
        return _batch(self.by_statement, "job_finish_many")


def _batch(by_statement: list[dict[str, Any]], name: str) -> float:
    for s in by_statement:
        if s["name"] == name and s["calls"]:
            return float(s["rows"]) / float(s["calls"])
    return float("nan")


@dataclass
class Bench:
    """The state shared by the runs: the server, the database, the app that enqueues."""

    server: pg.BenchServer
    db: str = DB
    url: str = ""
    bapp: BenchApp | None = None
    known: dict[str, str] = field(default_factory=dict)
    commit_ts: bool = True
    pgss: bool = True

    @classmethod
    def open(cls, server: pg.BenchServer, db: str = DB) -> Bench:
        url = server.fresh_database(db)
        bapp = build(database_url=url, application_name="bench-enqueue")
        bapp.app.migrate()
        known = {
            pg.fingerprint(bapp.app.queries[name].decode()): name
            for name in bapp.app.queries.names()
        }
        return cls(server, db, url, bapp, known, server.has_commit_ts(), server.has_pgss())

    @property
    def app(self) -> BenchApp:
        assert self.bapp is not None
        return self.bapp

    def close(self) -> None:
        if self.bapp is not None:
            self.bapp.app.close()

    # --- one run ----------------------------------------------------------------------------
    def refill(self, kind: str, jobs: int) -> None:
        """Empty the queue, enqueue `jobs` jobs of `kind`, settle the server."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE unbroken.jobs, unbroken.stats_minutely, unbroken.workers,"
                " unbroken.leaders"
            )
        task = self.app.task(kind)
        step = 10_000
        for start in range(0, jobs, step):
            self.app.app.enqueue_many(task.job() for _ in range(min(step, jobs - start)))
        self.app.app.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("ANALYZE unbroken.jobs")
            conn.execute("CHECKPOINT")
        pg.wait_no_backends(self.server.admin_url, self.db)

    def run(self, kind: str, concurrency: int, workers: int, jobs: int) -> Run:
        """One measured run, repeated while other processes took too much CPU."""
        return quietest(
            lambda: self._run_once(kind, concurrency, workers, jobs),
            lambda r: r.cpu["others_cpu_pct"],
        )

    def _run_once(self, kind: str, concurrency: int, workers: int, jobs: int) -> Run:
        self.refill(kind, jobs)
        wait_for_quiet()
        admin = self.server.admin_url
        xacts_before = pg.xact_count(admin, self.db)
        stmts_before = pg.statements(admin, self.db) if self.pgss else {}
        procs: list[Proc] = []
        window = CpuWindow(self.server.local.pid())
        with pg.ActivitySampler(admin, self.db) as sampler:
            window.start()
            for i in range(workers):
                procs.append(start_worker(self.url, f"bench-w{i + 1}", concurrency, burst=True))
            for p in procs:
                code = p.wait(timeout=600)
                if code != 0:
                    raise RuntimeError(
                        f"worker {p.name} exited {code}; log {p.log}\n{p.log_tail()}"
                    )
            window.workers = sum(p.cpu_seconds or 0.0 for p in procs)
            window.stop()
        pg.wait_no_backends(admin, self.db)
        xacts = pg.xact_count(admin, self.db) - xacts_before
        delta = pg.statement_delta(stmts_before, pg.statements(admin, self.db)) if self.pgss else []
        labelled = pg.label_statements(delta, self.known)
        seconds, source = self.elapsed(jobs)
        walls, cpus = [], []
        for p in procs:
            out = p.stdout_rest().strip().splitlines()
            if out:
                report = json.loads(out[-1])
                walls.append(float(report["run_seconds"]))
                cpus.append(float(report["run_cpu_seconds"]))
        by_statement = [
            {"name": name, "calls": s.calls, "rows": s.rows, "total_ms": round(s.total_ms, 1)}
            for name, s in labelled
        ]
        return Run(
            kind=kind,
            workers=workers,
            concurrency=concurrency,
            jobs=jobs,
            seconds=seconds,
            rate=jobs / seconds,
            end_source=source,
            xacts=xacts,
            statements=sum(s.calls for _, s in labelled),
            recurring_statements=sum(s.calls for name, s in labelled if name in RECURRING),
            by_statement=by_statement,
            sessions={p.name: sampler.peak_for(p.name) for p in procs},
            worker_cpu_seconds=sum(p.cpu_seconds or 0.0 for p in procs),
            run_cpu_seconds=sum(cpus),
            run_wall_seconds=max(walls) if walls else float("nan"),
            cpu=window.as_json(),
        )

    def statements_now(self) -> dict[int, pg.StatementStats]:
        return pg.statements(self.server.admin_url, self.db) if self.pgss else {}

    def statement_table(self, before: dict[int, pg.StatementStats], seconds: float) -> str:
        """Statements since `before`: calls, rows, server time, its share of `seconds`."""
        delta = pg.label_statements(pg.statement_delta(before, self.statements_now()), self.known)
        rows = [
            [
                name,
                fmt(s.calls),
                fmt(s.rows),
                fmt(s.total_ms / s.calls, 2),
                fmt(s.total_ms, 1),
                f"{s.total_ms / 1000 / seconds:.0%}",
            ]
            for name, s in delta
        ]
        return table(
            "database side (pg_stat_statements): execution time inside the server",
            ["statement", "calls", "rows", "ms/call", "total ms", "% of run"],
            rows,
        )

    def elapsed(self, jobs: int) -> tuple[float, str]:
        """Seconds from the first claim to the last outcome's commit, from the rows."""
        end = "max(pg_xact_commit_timestamp(xmin))" if self.commit_ts else "max(finished_at)"
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*),"
                f" min(attempted_at), {end} FROM unbroken.jobs"
            ).fetchone()
        assert row is not None
        done, total, first, last = row
        if done != jobs or total != jobs:
            raise RuntimeError(f"{done} of {total} jobs succeeded, expected {jobs}")
        assert isinstance(first, datetime)
        assert isinstance(last, datetime)
        source = "commit timestamp" if self.commit_ts else "finished_at (no commit timestamps)"
        return (last - first).total_seconds(), source

    def baseline_xacts(self, workers: int, concurrency: int) -> tuple[int, int]:
        """Transactions and statements of workers that start, find nothing, and stop."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE unbroken.jobs, unbroken.workers, unbroken.leaders")
        admin = self.server.admin_url
        pg.wait_no_backends(admin, self.db)
        xacts_before = pg.xact_count(admin, self.db)
        stmts_before = pg.statements(admin, self.db) if self.pgss else {}
        procs = [
            start_worker(self.url, f"bench-w{i + 1}", concurrency, burst=True)
            for i in range(workers)
        ]
        for p in procs:
            p.wait(timeout=120)
        pg.wait_no_backends(admin, self.db)
        delta = pg.statement_delta(stmts_before, pg.statements(admin, self.db)) if self.pgss else []
        return pg.xact_count(admin, self.db) - xacts_before, sum(s.calls for s in delta)


# --- the section ----------------------------------------------------------------------------------
def run_section(
    server: pg.BenchServer,
    *,
    jobs: int,
    concurrencies: list[int],
    kinds: list[str],
    repeat: int,
    two_workers: bool = True,
    pairs: int = 5,
) -> dict[str, Any]:
    bench = Bench.open(server)
    try:
        return _section(bench, jobs, concurrencies, kinds, repeat, two_workers, pairs)
    finally:
        bench.close()


def _section(
    bench: Bench,
    jobs: int,
    concurrencies: list[int],
    kinds: list[str],
    repeat: int,
    two_workers: bool,
    pairs: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": jobs, "repeat": repeat, "one_worker": {}, "two_workers": {}}
    best_runs: dict[str, Run] = {}
    best_conc: dict[str, int] = {}
    for kind in kinds:
        rates: dict[int, Repeated] = {c: Repeated() for c in concurrencies}
        runs: dict[int, list[Run]] = {c: [] for c in concurrencies}
        for rep in range(repeat):
            for c in concurrencies:  # interleaved, so a noisy minute hits every setting
                progress(f"unbroken {kind} tasks, 1 worker, concurrency {c} (run {rep + 1})")
                r = bench.run(kind, c, 1, jobs)
                rates[c].add(r.rate)
                runs[c].append(r)
        best = max(concurrencies, key=lambda c: rates[c].median)
        best_conc[kind] = best
        best_runs[kind] = max(runs[best], key=lambda r: r.rate)
        rows = []
        for c in concurrencies:
            median_run = sorted(runs[c], key=lambda r: r.rate)[len(runs[c]) // 2]
            rows.append(
                [
                    f"{c}{' *' if c == best else ''}",
                    fmt(rates[c].best),
                    fmt(rates[c].median),
                    fmt(median_run.fetch_batch, 1),
                    fmt(median_run.finish_batch, 1),
                    fmt(median_run.cpu_percent),
                    _cpu_text(median_run),
                ]
            )
        say(
            table(
                f"unbroken throughput, {kind} no-op tasks, 1 worker process, {jobs:,} jobs"
                f" (best of {repeat}; * = best concurrency by median)",
                [
                    "concurrency",
                    "jobs/s best",
                    "jobs/s median",
                    "fetch batch",
                    "finish batch",
                    "worker CPU %",
                    "CPU % server/workers/others",
                ],
                rows,
            )
        )
        out["one_worker"][kind] = {
            "best_concurrency": best,
            "by_concurrency": {str(c): rates[c].as_json() for c in concurrencies},
            "best_run": asdict(best_runs[kind]),
        }

    # --- database cost of the best configuration ------------------------------------------
    baseline = bench.baseline_xacts(1, 100)
    out["startup_baseline"] = {"xacts": baseline[0], "statements": baseline[1]}
    say(_db_cost_table(best_runs, baseline, jobs))
    out["db_cost"] = {kind: _db_cost(run, baseline, jobs) for kind, run in best_runs.items()}

    # --- two worker processes ---------------------------------------------------------------
    if two_workers:
        out["two_workers"] = _two_workers(bench, kinds, best_conc, jobs, pairs)
    return out


def _two_workers(
    bench: Bench, kinds: list[str], best_conc: dict[str, int], jobs: int, repeat: int
) -> dict[str, Any]:
    """Two worker processes against one, in pairs run back to back (order alternating).

    Each pair sees about the same background load, so the ratio of a pair is steadier than
    the ratio of two medians taken minutes apart on a shared machine.
    """
    out: dict[str, Any] = {}
    rows = []
    baseline2 = bench.baseline_xacts(2, 100)
    for kind in kinds:
        c = best_conc[kind]
        one, two = Repeated(), Repeated()
        ratios: list[float] = []
        ceilings: list[float] = []  # 2 cores / cores one worker uses: the most 2 can do
        two_runs: list[Run] = []
        for rep in range(repeat):
            pair: dict[int, Run] = {}
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                progress(
                    f"unbroken {kind} tasks, {workers} worker(s), concurrency {c} (pair {rep + 1})"
                )
                pair[workers] = bench.run(kind, c, workers, jobs)
            one.add(pair[1].rate)
            two.add(pair[2].rate)
            two_runs.append(pair[2])
            ratios.append(pair[2].rate / pair[1].rate)
            ceilings.append(2 / pair[1].cores_used)
        ratio = median(ratios)
        best_two = max(two_runs, key=lambda r: r.rate)
        peaks = [v["peak_total"] for v in best_two.sessions.values()]
        rows.append(
            [
                kind,
                str(c),
                fmt(one.median),
                fmt(two.median),
                fmt(two.best),
                ", ".join(f"{r:.2f}" for r in ratios),
                f"{ratio:.2f}x",
                verdict(ratio >= TARGET_TWO_WORKERS),
                f"{2 / median(ceilings):.2f}",
                f"{median(ceilings):.2f}x",
                _cpu_text(best_two),
                "/".join(str(p) for p in peaks),
                fmt((best_two.xacts - baseline2[0]) / jobs, 4),
            ]
        )
        out[kind] = {
            "concurrency": c,
            "one_worker_rate": one.as_json(),
            "rate": two.as_json(),
            "pair_ratios": ratios,
            "ratio_median": ratio,
            "ratio_best": max(ratios),
            "cpu_ceiling_ratios": ceilings,
            "cpu_ceiling_median": median(ceilings),
            "best_run": asdict(best_two),
        }
    say(
        table(
            f"unbroken, two worker processes vs one, in back-to-back pairs ({jobs:,} jobs; "
            f"target >= {TARGET_TWO_WORKERS}x)",
            [
                "tasks",
                "concurrency",
                "1 worker median",
                "2 workers median",
                "2 workers best",
                "pair ratios",
                "median ratio",
                "target",
                "cores 1 worker uses",
                "CPU ceiling (2 cores / that)",
                "CPU % server/workers/others (best 2w)",
                "peak sessions",
                "steady xacts/job",
            ],
            rows,
        )
    )
    return out


def _cpu_text(run: Run) -> str:
    return cpu_text(run.cpu)


def cpu_text(c: dict[str, float]) -> str:
    """'server/workers/others' CPU % of one core; '!' marks a run others made noisy."""
    noisy = "!" if c["others_cpu_pct"] >= QUIET.threshold else ""
    return f"{c['server_cpu_pct']:.0f}/{c['workers_cpu_pct']:.0f}/{c['others_cpu_pct']:.0f}{noisy}"


def _db_cost(run: Run, baseline: tuple[int, int], jobs: int) -> dict[str, Any]:
    steady_xacts = (run.xacts - baseline[0]) / jobs
    return {
        "xacts_per_job_whole_run": run.xacts / jobs,
        "xacts_per_job_steady": steady_xacts,
        "statements_per_job_whole_run": run.statements / jobs,
        "statements_per_job_steady": run.recurring_statements / jobs,
        "xacts_not_in_pg_stat_statements": run.xacts - run.statements,
        "target_xacts_per_job": TARGET_XACTS_PER_JOB,
        "met": steady_xacts <= TARGET_XACTS_PER_JOB,
        "sessions": run.sessions,
        "by_statement": run.by_statement,
    }


def _db_cost_table(best_runs: dict[str, Run], baseline: tuple[int, int], jobs: int) -> str:
    parts = []
    rows = []
    for kind, run in best_runs.items():
        cost = _db_cost(run, baseline, jobs)
        rows.append(
            [
                f"{kind} (c={run.concurrency})",
                fmt(cost["xacts_per_job_whole_run"], 4),
                fmt(cost["xacts_per_job_steady"], 4),
                verdict(cost["met"]),
                fmt(cost["statements_per_job_whole_run"], 4),
                fmt(cost["statements_per_job_steady"], 4),
                fmt(cost["xacts_not_in_pg_stat_statements"]),
            ]
        )
    parts.append(
        table(
            f"unbroken database cost per job, best configuration ({jobs:,} jobs; target <= "
            f"{TARGET_XACTS_PER_JOB} transactions/job in steady state; start-up + shutdown of "
            f"an idle worker = {baseline[0]} xacts, {baseline[1]} statements)",
            [
                "tasks",
                "xacts/job whole run",
                "xacts/job steady",
                "target",
                "stmts/job whole run",
                "stmts/job steady",
                "xacts without a statement",
            ],
            rows,
        )
    )
    for kind, run in best_runs.items():
        srows = [
            [
                s["name"],
                fmt(s["calls"]),
                fmt(s["rows"]),
                fmt(s["rows"] / s["calls"], 1),
                fmt(s["total_ms"] / s["calls"], 2),
            ]
            for s in run.by_statement
        ]
        parts.append(
            table(
                f"statements of the best {kind} run (pg_stat_statements, top level)",
                ["statement", "calls", "rows", "rows/call", "ms/call"],
                srows,
            )
        )
        srows = []
        for name, sess in run.sessions.items():
            roles = ", ".join(f"{r}={n}" for r, n in sorted(sess["peak_by_role"].items()))
            runtime = sess["peak_without_listener"]
            ok = runtime <= TARGET_CONNECTIONS and sess["peak_by_role"].get("listener", 0) <= 1
            srows.append([name, str(sess["peak_total"]), str(runtime), roles, verdict(ok)])
        parts.append(
            table(
                f"peak sessions per worker process, best {kind} run (pg_stat_activity every"
                f" 10 ms; target <= {TARGET_CONNECTIONS} + listener)",
                [
                    "worker",
                    "peak total",
                    "peak w/o listener",
                    "peak by role (application_name)",
                    "target",
                ],
                srows,
            )
        )
    return "\n".join(parts)
