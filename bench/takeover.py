"""Leader takeover: how long maintenance stops when the leader dies or freezes.

    python -m bench.takeover                 # 5 runs of each case, a throwaway server
    python -m bench.takeover --repeat 9

Three worker processes (`python -m bench.worker`) run with production defaults (30 s lease,
so an 8 s term; candidates try every 2 s). Each run finds the leader (the `leaders` row's
holder), then

- killed: SIGKILLs it;
- frozen: SIGSTOPs it (alive, its sessions open: only its term can tell);
- killed, listen off: SIGKILLs it with every worker on `UNBROKEN_LISTEN=false` (as behind
  PgBouncer in transaction mode: no session to watch, the term alone decides);

and measures, from the signal, until another worker holds the row (takeover) and until a
job that fell due 0.2 s after the signal is promoted (maintenance resumed). The victim is
then replaced by a fresh worker. Target (issue 11): a killed leader replaced within 10 s.

It also reads what leadership costs an idle worker: pg_stat_statements calls per second of
the election statement over a quiet window (one leader renewing, two candidates trying),
and a candidate's try against a live leader timed from here, with the WAL it wrote.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from bench import server as pg
from bench.common import fmt, median, progress, say, table, verdict
from bench.procs import Proc, spawn, worker_env
from unbroken import migrations
from unbroken.sql import queries

DB = "bench_takeover"
TARGET_SECONDS = 10.0
WORKERS = 3
CASES = ("killed", "frozen", "killed, listen off")
ELECT = "leader_attempt_elect"


def run_section(
    server: pg.BenchServer, *, repeat: int = 5, quiet_window: float = 20.0
) -> dict[str, Any]:
    url = server.fresh_database(DB)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn)
    out: dict[str, Any] = {"repeat": repeat, "workers": WORKERS, "cases": {}}
    try:
        for case in CASES:
            listen = case != "killed, listen off"
            with _fleet(url, listen) as fleet:
                if case == "killed":
                    out["idle_cost"] = _idle_cost(server, url, quiet_window)
                runs = []
                for rep in range(repeat):
                    progress(f"takeover: {case} (run {rep + 1} of {repeat})")
                    runs.append(_one(url, fleet, case))
            out["cases"][case] = {
                "runs": runs,
                "takeover_median_s": median([r["takeover_s"] for r in runs]),
                "takeover_max_s": max(r["takeover_s"] for r in runs),
                "promoted_median_s": median([r["promoted_s"] for r in runs]),
            }
    finally:
        server.drop_database(DB)
    _report(out)
    return out


# --- the workers -------------------------------------------------------------------------------
class Fleet:
    def __init__(self, url: str, listen: bool) -> None:
        self.url = url
        self.listen = listen
        self.procs: list[Proc] = []
        self._names = iter(range(1, 1_000_000))

    def start(self) -> Proc:
        name = f"takeover-{next(self._names)}"
        env = worker_env(self.url, name)
        if not self.listen:
            env["UNBROKEN_LISTEN"] = "false"
        proc = spawn(name, ["-m", "bench.worker", "--concurrency", "10"], env=env)
        proc.wait_ready()
        self.procs.append(proc)
        return proc

    def by_pid(self, pid: int) -> Proc:
        [proc] = [p for p in self.procs if p.popen.pid == pid]
        return proc

    def discard(self, proc: Proc) -> None:
        """SIGKILL (also ends a stopped process) and reap, without keeping its log."""
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(30)
        self.procs.remove(proc)


@contextmanager
def _fleet(url: str, listen: bool) -> Iterator[Fleet]:
    fleet = Fleet(url, listen)
    try:
        for _ in range(WORKERS):
            fleet.start()
        yield fleet
    finally:
        for proc in list(fleet.procs):
            proc.stop(30)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE unbroken.jobs, unbroken.workers, unbroken.leaders")


def _leader(conn: psycopg.Connection[Any]) -> tuple[str, int | None] | None:
    row = conn.execute(
        "SELECT holder, lock_key FROM unbroken.leaders WHERE name = 'maintenance'"
        " AND expires_at > now()"
    ).fetchone()
    return (str(row[0]), row[1]) if row else None


def _pid(holder: str) -> int:
    return int(holder.split(":")[-2])  # host:pid:token


def _wait(check: Any, timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"not within {timeout:g} s: {what}")


# --- one run -----------------------------------------------------------------------------------
def _one(url: str, fleet: Fleet, case: str) -> dict[str, Any]:
    insert = queries()["job_insert_many"]
    with psycopg.connect(url, autocommit=True) as conn:
        # The leader's row names its listener's lock (listen on), and every candidate has been
        # trying for a while: the state a leader dies in, not a start-up race.
        holder, lock_key = _wait(
            lambda: (lead := _leader(conn)) and (lead[1] is not None or not fleet.listen) and lead,
            60,
            "a leader",
        )
        time.sleep(3.0)  # a settled fleet: every candidate past its first tries
        victim = fleet.by_pid(_pid(holder))
        params = {
            "queues": ["default"],
            "tasks": ["bench.noop_async"],
            "args": ['{"args": [], "kwargs": {}}'],
            "priorities": [0],
            "run_ats": [None],
            "max_attempts": [5],
            "unique_keys": [None],
            "limit_keys": [None],
        }
        due = conn.execute("SELECT now() + interval '200 milliseconds'").fetchone()
        assert due is not None
        params["run_ats"] = [due[0]]
        job_id = conn.execute(insert, params).fetchone()
        assert job_id is not None
        hit = time.monotonic()
        victim.popen.send_signal(signal.SIGSTOP if case == "frozen" else signal.SIGKILL)

        def new_holder() -> str | None:
            lead = _leader(conn)
            return lead[0] if lead and lead[0] != holder else None

        new = _wait(new_holder, 60, "another worker to lead")
        took = time.monotonic() - hit
        _wait(
            lambda: (
                conn.execute(
                    "SELECT state <> 'scheduled' FROM unbroken.jobs WHERE id = %s", job_id
                ).fetchone()
                == (True,)
            ),
            60,
            "the due job to be promoted",
        )
        promoted = time.monotonic() - hit
    fleet.discard(victim)
    fleet.start()
    return {
        "takeover_s": round(took, 3),
        "promoted_s": round(promoted, 3),
        "old_lock_key": lock_key,
        "new_holder": new,
    }


# --- what leadership costs an idle worker --------------------------------------------------------
def _idle_cost(server: pg.BenchServer, url: str, window: float) -> dict[str, Any]:
    progress(f"takeover: idle statements over {window:g} s (1 leader, {WORKERS - 1} candidates)")
    known = {pg.fingerprint(queries()[n].decode()): n for n in queries().names()}
    dbname = url.rsplit("/", 1)[1]
    out: dict[str, Any] = {"window_s": window}
    if server.has_pgss():
        time.sleep(3.0)  # past the start-up statements
        before = pg.statements(server.admin_url, dbname)
        time.sleep(window)
        delta = pg.statement_delta(before, pg.statements(server.admin_url, dbname))
        by_name = {
            name: round(s.calls / window, 3) for name, s in pg.label_statements(delta, known)
        }
        out["calls_per_s_all_workers"] = by_name
        out["calls_per_s_per_worker"] = round(sum(by_name.values()) / WORKERS, 3)
        out["elect_calls_per_s"] = by_name.get(ELECT, 0.0)
    out.update(_candidate_try(url))
    return out


def _candidate_try(url: str, tries: int = 500) -> dict[str, Any]:
    """A candidate's try against the live leader, from here: its time, and the WAL it wrote
    (none expected: it is a read). Other workers write meanwhile (renewals, polls), so the
    WAL figure is an upper bound over the window."""
    elect = queries()[ELECT]
    params = {"name": "maintenance", "holder": "bench-candidate", "ttl": 8.0, "lock_key": None}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(elect, params, prepare=True)
        lsn = "SELECT pg_current_wal_insert_lsn()"
        first = conn.execute(lsn).fetchone()
        started = time.perf_counter()
        took = 0
        for _ in range(tries):
            took += conn.execute(elect, params).fetchone() is not None
        per_try = (time.perf_counter() - started) / tries
        last = conn.execute(lsn).fetchone()
        assert first is not None
        assert last is not None
        wal = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", [last[0], first[0]]).fetchone()
    assert took == 0, "the bench's candidate took the lead from a live leader"
    return {
        "candidate_try_us": round(per_try * 1e6, 1),
        "wal_bytes_during_tries": int(wal[0]) if wal else None,
        "tries": tries,
    }


# --- the table -----------------------------------------------------------------------------------
def _report(out: dict[str, Any]) -> None:
    rows = []
    for case, data in out["cases"].items():
        bound = "" if case == "killed" else " (term 8 s + a try)"
        rows.append(
            [
                case,
                fmt(data["takeover_median_s"], 2),
                fmt(data["takeover_max_s"], 2),
                fmt(data["promoted_median_s"], 2),
                f"<= {TARGET_SECONDS:g} s{bound}",
                verdict(data["takeover_max_s"] <= TARGET_SECONDS),
            ]
        )
    say(
        table(
            f"leader takeover, {WORKERS} workers, production defaults, {out['repeat']} runs each",
            ["case", "takeover median s", "max s", "promotion resumed median s", "target", ""],
            rows,
        )
    )
    cost = out.get("idle_cost", {})
    if cost:
        lines = [
            ["election statements/s, all workers", fmt(cost.get("elect_calls_per_s"), 2)],
            ["statements/s per idle worker, all kinds", fmt(cost.get("calls_per_s_per_worker"), 2)],
            ["a candidate's try against a live leader, us", fmt(cost["candidate_try_us"], 1)],
            [
                f"WAL bytes during {cost['tries']} tries (all sessions)",
                cost["wal_bytes_during_tries"],
            ],
        ]
        say(table("what leadership costs when idle", ["figure", "value"], lines))
        if "calls_per_s_all_workers" in cost:
            say(
                table(
                    f"idle statements/s by name, {WORKERS} workers",
                    ["statement", "calls/s"],
                    [[n, fmt(v, 2)] for n, v in cost["calls_per_s_all_workers"].items()],
                )
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.takeover")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quiet-window", type=float, default=20.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    server = pg.BenchServer().start()
    try:
        out = run_section(server, repeat=args.repeat, quiet_window=args.quiet_window)
    finally:
        server.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
