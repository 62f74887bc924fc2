"""CDC: changes per second of decoding a logical slot, raw and through unbroken.

On a server with wal_level=logical that this benchmark starts (or `--url`), a source table
receives N row changes (60% inserts, 30% updates, 10% deletes, in transactions of 1,000 rows),
kept in a replication slot. Then, each repeated:

- raw decoding: `SELECT count(*) FROM pg_logical_slot_peek_binary_changes(...)`, the server's
  WAL decoding and pgoutput alone, nothing sent to the client;
- + fetch: the same peek with every payload sent to the client;
- + decode: and every payload decoded by unbroken.cdc.pgoutput;
- + rows: and every row loaded into Python values (RowLoader: int, float, datetime, ...);
- pipeline: the whole CDC pipeline into a sink table through run_chunks, when
  unbroken.cdc has one (see `pipeline_section`).

Goal (issue 15): >= 20,000 changes/s end to end.

    python -m bench.cdc                        # 200,000 changes, 3 runs
    python -m bench.cdc --changes 50000 --repeat 1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.common import Repeated, fmt, progress, say, table, verdict
from unbroken.cdc.pgoutput import Delete, Insert, Relation, RowLoader, Update, decode
from unbroken.embedded import LocalServer, wait_until_accepting

GOAL = 20_000
BATCH = 1_000  # rows per source transaction
SLOT, PUBLICATION, TABLE = "bench_cdc_slot", "bench_cdc_pub", "bench_cdc_source"
LOGICAL_CONF = {"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"}
OPTIONS = "'proto_version', '1', 'publication_names', 'bench_cdc_pub', 'messages', 'true'"
COUNT = f"SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, {OPTIONS})"
FETCH = f"SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, {OPTIONS})"
SETUP = f"""
DROP PUBLICATION IF EXISTS {PUBLICATION};
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
    id bigint PRIMARY KEY, name text NOT NULL, amount double precision,
    created_at timestamptz NOT NULL, payload text
);
CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE};
"""


@contextmanager
def logical_server() -> Iterator[str]:
    """A throwaway server with wal_level=logical (PostgreSQL's defaults otherwise)."""
    root = Path(tempfile.mkdtemp(prefix="unbroken-bench-cdc-"))
    server = LocalServer(root / "data", extra_conf=LOGICAL_CONF)
    try:
        server.init()
        server.start()
        wait_until_accepting(server.url())
        yield server.url()
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def make_changes(url: str, changes: int) -> int:
    """Create the source table and its slot, then write `changes` row changes; returns the
    number of source transactions."""
    inserts, updates = changes * 6 // 10, changes * 3 // 10
    deletes = changes - inserts - updates
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s",
            [SLOT],
        )
        conn.execute(SETUP.encode())
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [SLOT])
        statements = [
            (
                inserts,
                f"INSERT INTO {TABLE} SELECT g, 'issue-' || g, g * 0.25, now(),"
                " 'lorem ipsum dolor sit amet lorem ipsum dolor sit amet'"
                " FROM generate_series(%s::bigint, %s::bigint - 1) g",
            ),
            (updates, f"UPDATE {TABLE} SET amount = amount + 1 WHERE id >= %s AND id < %s"),
            (deletes, f"DELETE FROM {TABLE} WHERE id >= %s AND id < %s"),
        ]
        transactions = 0
        for count, statement in statements:
            for start in range(0, count, BATCH):
                conn.execute(statement.encode(), [start, min(count, start + BATCH)])
                transactions += 1
        row = conn.execute(f"SELECT count(*) FROM {TABLE}".encode()).fetchone()
        assert row is not None
        assert row[0] == inserts - deletes
    return transactions


def raw_count(url: str) -> tuple[float, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        row = conn.execute(COUNT.encode(), [SLOT]).fetchone()
        elapsed = time.perf_counter() - started
    assert row is not None
    return elapsed, int(row[0])


def fetch_and(url: str, each: Callable[[list[bytes], psycopg.Connection[Any]], int]) -> float:
    """Peek every payload to the client, then run `each` on them; returns the seconds."""
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        payloads = [row[0] for row in conn.execute(FETCH.encode(), [SLOT])]
        each(payloads, conn)
        return time.perf_counter() - started


def nothing(payloads: list[bytes], conn: psycopg.Connection[Any]) -> int:
    return len(payloads)


def decode_all(payloads: list[bytes], conn: psycopg.Connection[Any]) -> int:
    changes = 0
    for payload in payloads:
        if isinstance(decode(payload), Insert | Update | Delete):
            changes += 1
    return changes


def load_all(payloads: list[bytes], conn: psycopg.Connection[Any]) -> int:
    loaders: dict[int, RowLoader] = {}
    changes = 0
    for payload in payloads:
        message = decode(payload)
        if isinstance(message, Relation):
            loaders[message.oid] = RowLoader(message, conn)
        elif isinstance(message, Insert | Update):
            loaders[message.relation_oid].load(message.new)
            changes += 1
        elif isinstance(message, Delete):
            key = message.key if message.key is not None else message.old
            assert key is not None
            loaders[message.relation_oid].load(key)
            changes += 1
    return changes


def measure(url: str, *, changes: int, repeat: int) -> dict[str, Any]:
    progress(f"cdc: writing {changes:,} changes")
    transactions = make_changes(url, changes)
    _, messages = raw_count(url)
    rates = {name: Repeated() for name in ("raw", "fetch", "decode", "rows")}
    steps: dict[str, Callable[[], float]] = {
        "raw": lambda: raw_count(url)[0],
        "fetch": lambda: fetch_and(url, nothing),
        "decode": lambda: fetch_and(url, decode_all),
        "rows": lambda: fetch_and(url, load_all),
    }
    for run in range(repeat):
        progress(f"cdc: run {run + 1}/{repeat}")
        for name, step in steps.items():
            rates[name].add(changes / step())
    results: dict[str, Any] = {
        "changes": changes,
        "messages": messages,
        "transactions": transactions,
        "repeat": repeat,
        **{f"{name}_changes_s": rate.as_json() for name, rate in rates.items()},
    }
    pipeline = pipeline_section(url, changes=changes, repeat=repeat)
    if pipeline is not None:
        results["pipeline_changes_s"] = pipeline.as_json()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
    return results


def pipeline_section(url: str, *, changes: int, repeat: int) -> Repeated | None:
    """The whole pipeline into a sink table through run_chunks; None while unbroken.cdc has no
    pipeline to run."""
    progress("cdc: the pipeline part waits for unbroken.cdc's pipeline; skipped")
    return None


LABELS = {
    "raw": "raw decoding (server: peek, count only)",
    "fetch": "+ fetch to the client",
    "decode": "+ decode (unbroken.cdc.pgoutput)",
    "rows": "+ load rows (RowLoader)",
    "pipeline": "pipeline into a sink (run_chunks)",
}


def report(results: dict[str, Any]) -> str:
    raw = results["raw_changes_s"]["median"]
    lines = []
    for name, label in LABELS.items():
        figure = results.get(f"{name}_changes_s")
        if figure is None:
            continue
        end_to_end = name == "pipeline"
        lines.append(
            [
                label,
                fmt(figure["median"]),
                fmt(figure["best"]),
                f"{figure['median'] / raw:.0%}",
                verdict(figure["median"] >= GOAL if end_to_end or name == "rows" else None),
            ]
        )
    return table(
        f"cdc: {results['changes']:,} changes ({results['messages']:,} pgoutput messages, "
        f"{results['transactions']:,} transactions), {results['repeat']} runs",
        ["", "changes/s (median)", "(best)", "of raw", f">= {GOAL:,}/s"],
        lines,
    )


def run_section(changes: int = 200_000, repeat: int = 3) -> dict[str, Any]:
    """Called by bench.run: starts its own server (the shared one has wal_level=replica)."""
    with logical_server() as url:
        results = measure(url, changes=changes, repeat=repeat)
    say(report(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cdc", description=__doc__.split("\n")[0])
    p.add_argument("--changes", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--url", help="a server with wal_level=logical (default: a throwaway one)")
    args = p.parse_args(argv)
    if args.url:
        results = measure(args.url, changes=args.changes, repeat=args.repeat)
        say(report(results))
    else:
        run_section(args.changes, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
