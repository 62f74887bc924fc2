"""Admin queries over millions of finished jobs: server time of every CLI list, page and scrape.

    python -m bench.scale load --rows 5000000      # once: a kept server in --dir, loaded
    python -m bench.scale migrate                  # apply pending migrations (timed)
    python -m bench.scale measure --label after    # time every admin read, write a JSON file
    python -m bench.scale stop                     # stop the kept server

The server lives in `--dir` (default /tmp/unbroken-scale-pg) across runs, because loading
5,000,000 jobs takes minutes on two cores: load once, measure before and after a change.
`load` migrates to the newest migration unless `--at VERSION` stops earlier (to measure the
code of that version). What is measured is the database's own time for everything one
operation runs (pg_stat_statements: planning plus execution, summed over its statements),
the best of `--repeat` runs after one warm-up, beside the wall clock in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.common import RESULTS_DIR, progress, say, table
from unbroken import migrations
from unbroken.embedded import LocalServer, wait_until_accepting

HERE = Path(__file__).parent
DB = "scale"
CONF = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_planning": "on",
    "max_wal_size": "4GB",  # the bulk load, not the measurement
}


def server(root: Path) -> LocalServer:
    local = LocalServer(root / "data", extra_conf=CONF)
    if not local.initialised():
        local.init()
    if not local.is_running():
        local.start()
    wait_until_accepting(local.url("postgres"))
    return local


def database(local: LocalServer) -> str:
    with psycopg.connect(local.url("postgres"), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
        if not found:
            conn.execute(f"CREATE DATABASE {DB}")
    url = local.url(DB)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return url


def migrate_to(url: str, version: int | None) -> list[int]:
    """Apply the migrations up to `version` (all when None); returns the versions applied."""
    keep = [m for m in migrations.available() if version is None or m.version <= version]
    hidden = {m.version for m in migrations.available()} - {m.version for m in keep}
    original = migrations.available
    migrations.available = lambda: keep  # type: ignore[assignment]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            applied = migrations.migrate(conn)
    finally:
        migrations.available = original  # type: ignore[assignment]
    if hidden:
        progress(f"left out migrations {sorted(hidden)}")
    return [m.version for m in applied]


def load(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM unbroken.jobs").fetchone()
        if row and row[0]:
            progress(f"already loaded ({row[0]:,} jobs): nothing to do")
            return
        conn.execute("SET synchronous_commit = off")
        text = "\n".join(
            line
            for line in (HERE / "scale_load.sql").read_text().splitlines()
            if not line.startswith("--")
        )
        for statement in filter(str.strip, text.split(";\n")):
            started = time.monotonic()
            conn.execute(statement.encode(), {"rows": rows})
            progress(f"{statement.split()[2]}: {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        # The load committed asynchronously: until its commit is on disk VACUUM cannot mark
        # its pages all-visible, and the plans would be those of a table never vacuumed.
        conn.execute("CHECKPOINT")
        conn.execute("VACUUM (ANALYZE) unbroken.jobs")
        progress(f"vacuum analyze: {time.monotonic() - started:.0f} s")
        size = conn.execute(
            "SELECT pg_size_pretty(pg_table_size('unbroken.jobs')),"
            " pg_size_pretty(pg_indexes_size('unbroken.jobs'))"
        ).fetchone()
        progress(f"jobs: table {size[0] if size else '?'}, indexes {size[1] if size else '?'}")


# What is timed: every `jobs ls` variant, the other operator lists, every dashboard page and
# the metrics scrape. `{mid}` is an id half way down the table (a later page).
CLI: list[tuple[str, ...]] = [
    ("jobs", "ls"),
    *[("jobs", "ls", "--state", s) for s in ("succeeded", "dead", "cancelled", "available")],
    ("jobs", "ls", "--state", "running"),
    ("jobs", "ls", "--state", "scheduled,retryable"),
    ("jobs", "ls", "--state", "dead,cancelled"),
    ("jobs", "ls", "--queue", "queue_3"),
    ("jobs", "ls", "--task", "bench.tasks.task_5"),
    ("jobs", "ls", "--state", "dead", "--queue", "queue_3"),
    ("jobs", "ls", "--args", '{"user": 4242}'),
    ("jobs", "ls", "--args", "order number 4242"),
    ("jobs", "ls", "--older-than", "7d"),
    ("jobs", "ls", "--before", "{mid}"),
    ("jobs", "ls", "--state", "dead", "--before", "{mid}"),
    ("jobs", "ls", "--json"),
    ("dlq", "ls"),
    ("dlq", "ls", "--queue", "queue_3"),
    # The worst case of a filter read from INCLUDE columns: a queue no job has (every dead
    # job's index entry for dead letters; the search bound for a list).
    ("jobs", "ls", "--queue", "no_such_queue"),
    ("dlq", "ls", "--queue", "no_such_queue"),
    ("queues",),
    ("stats",),
]
PAGES = [
    "/",
    "/jobs",
    "/jobs?state=dead",
    "/jobs?state=succeeded",
    "/jobs?state=available",
    "/jobs?queue=queue_3",
    "/jobs?state=dead&before={mid}",
    "/jobs?args=%7B%22user%22%3A+4242%7D",
    "/jobs?args=order+number+4242",
    "/jobs?older_than=7d",
    "/jobs/{mid}",
    "/queues",
    "/dead",
    "/long",
    "/metrics",
]


class ServerTime:
    """The database time (planning + execution) of everything run in `dbname` meanwhile."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)

    def reset(self) -> None:
        self._conn.execute("SELECT pg_stat_statements_reset()")

    def ms(self) -> tuple[float, int]:
        row = self._conn.execute(
            "SELECT coalesce(sum(total_plan_time + total_exec_time), 0)::float8,"
            " coalesce(sum(calls), 0)::int FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND query NOT LIKE '%%pg_stat_statements%%'"
        ).fetchone()
        return (row[0], row[1]) if row else (0.0, 0)


def timed(clock: ServerTime, run: Callable[[], Any], repeat: int) -> dict[str, Any]:
    run()  # warm-up: caches, connections
    runs = []
    for _ in range(repeat):
        clock.reset()
        started = time.monotonic()
        run()
        wall = (time.monotonic() - started) * 1000
        server_ms, calls = clock.ms()
        runs.append({"server_ms": server_ms, "wall_ms": wall, "statements": calls})
    best = min(runs, key=lambda r: r["server_ms"])
    return {**best, "runs": runs}


def measure(url: str, repeat: int, label: str) -> None:
    import subprocess
    import warnings

    from starlette.exceptions import StarletteDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarletteDeprecationWarning)
        from starlette.testclient import TestClient

    from unbroken.dashboard import create_app
    from unbroken.settings import load_settings

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT (min(id) + max(id)) / 2 FROM unbroken.jobs").fetchone()
        mid = str(row[0] if row else 1)
    clock = ServerTime(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    env.update(UNBROKEN_DATABASE_URL=url, COLUMNS="200")
    unbroken = str(Path(sys.executable).parent / "unbroken")
    results: dict[str, Any] = {}
    for args in CLI:
        argv = [a.replace("{mid}", mid) for a in args]
        name = "unbroken " + " ".join(args)

        def run_cli(argv: list[str] = argv) -> None:
            done = subprocess.run([unbroken, *argv], env=env, capture_output=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{argv}: {done.stderr.decode()[-500:]}")

        results[name] = timed(clock, run_cli, repeat)
        progress(f"{name}: {results[name]['server_ms']:.1f} ms")
    app = create_app(load_settings(database_url=url), credentials=None)
    # A loopback Host: the dashboard answers no other unless told (its Host allow-list).
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for page in PAGES:
            path = page.replace("{mid}", mid)

            def get(path: str = path) -> None:
                response = client.get(path)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code}")

            results[page] = timed(clock, get, repeat)
            progress(f"{page}: {results[page]['server_ms']:.1f} ms")
    rows = [
        (name, f"{r['server_ms']:.1f}", f"{r['wall_ms']:.0f}", r["statements"])
        for name, r in results.items()
    ]
    say(table(f"admin reads ({label})", ["operation", "server ms", "wall ms", "stmts"], rows))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"scale-{label}.json"
    out.write_text(json.dumps({"label": label, "results": results}, indent=2) + "\n")
    say(f"written: {out}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("command", choices=("load", "migrate", "measure", "stop"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/unbroken-scale-pg"))
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--at", type=int, default=None, help="migrate no further than this")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="run")
    args = parser.parse_args(argv)
    local = server(args.dir)
    if args.command == "stop":
        local.stop()
        return
    url = database(local)
    if args.command in ("load", "migrate"):
        started = time.monotonic()
        applied = migrate_to(url, args.at)
        say(f"migrations applied: {applied or 'none'} in {time.monotonic() - started:.1f} s")
    if args.command == "load":
        load(url, args.rows)
    if args.command == "measure":
        measure(url, args.repeat, args.label)


if __name__ == "__main__":
    main()
