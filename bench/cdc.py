"""CDC: changes per second of decoding a logical slot, raw and through unbroken.

Two throwaway servers: the source (wal_level=logical) and the sink (PostgreSQL's defaults:
fsync and synchronous_commit on). A source table receives N row changes (60% inserts, 30%
updates, 10% deletes, in transactions of 1,000 rows), kept in a replication slot. Then, each
repeated:

- raw decoding: `SELECT count(*) FROM pg_logical_slot_peek_binary_changes(...)`, the server's
  WAL decoding and pgoutput alone, nothing sent to the client;
- + fetch: the same peek with every payload sent to the client;
- + decode: and every payload decoded by unbroken.cdc.pgoutput;
- + rows: and every row loaded into Python values (RowLoader: int, float, datetime, ...);
- pipeline: `run_pipeline(..., until="caught_up")` (on run_chunks) with `mirror` into a
  sink table of an unbroken database on the sink server: each chunk's rows, position and
  checkpoint committed (and flushed) together, the slot advanced after; repeated on fresh
  changes, the sink checked equal to the source after every run;
- the same with 5,000 changes per chunk instead of the default 1,000 (fewer commits, each
  waiting for its WAL flush on the sink);
- and at 5,000 per chunk with a sink write of this benchmark's own instead of mirror(): each
  run of upserts in one INSERT from arrays, each run of deletes in one DELETE.

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
from itertools import groupby
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bench.chunks import context, new_job
from bench.common import Repeated, fmt, progress, say, table, verdict
from unbroken.cdc import Change, Pipeline, mirror, run_pipeline
from unbroken.cdc.mirror import apply_change
from unbroken.cdc.pgoutput import Delete, Insert, Relation, RowLoader, Update, decode
from unbroken.chunks import Chunk
from unbroken.context import reset_current_job, set_current_job
from unbroken.db._sync.pool import Database
from unbroken.embedded import LocalServer, wait_until_accepting
from unbroken.migrations import migrate
from unbroken.settings import load_settings

GOAL = 20_000
BIG_CHUNK = 5_000  # rows per chunk of the last variants (run_pipeline's default)
SMALL_CHUNK = 1_000  # run_chunks' default
BATCH = 1_000  # rows per source transaction
SLOT, PUBLICATION, TABLE = "bench_cdc_slot", "bench_cdc_pub", "bench_cdc_source"
LOGICAL_CONF = {"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"}
OPTIONS = "'proto_version', '1', 'publication_names', 'bench_cdc_pub', 'messages', 'true'"
COUNT = f"SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, {OPTIONS})"
FETCH = f"SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, {OPTIONS})"
SINK_DB, SINK_TABLE = "bench_cdc_sink", "bench_cdc_sink_rows"
PIPELINE_SLOT = "unbroken_bench"  # Pipeline(name="bench")'s
COLUMNS = ("id", "name", "amount", "created_at", "payload")
SINK_SETUP = f"""
CREATE TABLE {SINK_TABLE} (
    id bigint PRIMARY KEY, name text NOT NULL, amount double precision,
    created_at timestamptz NOT NULL, payload text
);
"""
UPSERTS = {"insert": "upsert", "update": "upsert", "snapshot": "upsert"}
UPSERT = f"""
INSERT INTO {SINK_TABLE} (id, name, amount, created_at, payload)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::float8[], %s::timestamptz[], %s::text[])
ON CONFLICT (id) DO UPDATE SET name = excluded.name, amount = excluded.amount,
    created_at = excluded.created_at, payload = excluded.payload
""".encode()
DELETE = f"DELETE FROM {SINK_TABLE} WHERE id = ANY(%s::bigint[])".encode()
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
def throwaway_server(conf: dict[str, str]) -> Iterator[str]:
    """A throwaway server with `conf` (PostgreSQL's defaults otherwise); its URL."""
    root = Path(tempfile.mkdtemp(prefix="unbroken-bench-cdc-"))
    server = LocalServer(root / "data", extra_conf=conf)
    try:
        server.init()
        server.start()
        wait_until_accepting(server.url())
        yield server.url()
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def setup_source(url: str) -> None:
    """The source table (empty) and its publication."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = ANY(%s)",
            [[SLOT, PIPELINE_SLOT]],
        )
        conn.execute(SETUP.encode())


def write_changes(url: str, changes: int) -> int:
    """Write `changes` row changes to the (empty) source table; returns the number of source
    transactions."""
    inserts, updates = changes * 6 // 10, changes * 3 // 10
    deletes = changes - inserts - updates
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
    with psycopg.connect(url, autocommit=True) as conn:
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


def measure(url: str, sink_url: str, *, changes: int, repeat: int) -> dict[str, Any]:
    setup_source(url)
    sink = Sink(url, sink_url)
    try:
        sink.drain()  # creates the pipeline's slot before the changes are written
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [SLOT])
        progress(f"cdc: writing {changes:,} changes")
        transactions = write_changes(url, changes)
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
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
        # name: (sink write, rows per chunk)
        variants = {
            "pipeline": (sink.write, SMALL_CHUNK),
            "pipeline_5000": (sink.write, BIG_CHUNK),
            "batched_5000": (sink.write_batched, BIG_CHUNK),
        }
        pipelines = {name: Repeated() for name in variants}
        for run in range(repeat):
            for name, rate in pipelines.items():
                progress(f"cdc: {name} run {run + 1}/{repeat}")
                if rate.values or name != "pipeline":  # the first streams the changes above
                    sink.reset()
                    write_changes(url, changes)
                rate.add(changes / sink.drain(*variants[name]))
                sink.check_equal()
    finally:
        sink.close()
    return {
        "changes": changes,
        "messages": messages,
        "transactions": transactions,
        "repeat": repeat,
        **{f"{name}_changes_s": rate.as_json() for name, rate in rates.items()},
        **{f"{name}_changes_s": rate.as_json() for name, rate in pipelines.items()},
    }


class Sink:
    """The pipeline's side: an unbroken database on the sink server with a sink table, and a
    job to run `run_pipeline` in (as a worker runs a sync task)."""

    def __init__(self, source_url: str, server_url: str) -> None:
        self.source_url = source_url
        self.pipeline = Pipeline(name="bench", source_url=source_url, tables=[f"public.{TABLE}"])
        assert self.pipeline.slot_name == PIPELINE_SLOT
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {SINK_DB} WITH (FORCE)".encode())
            conn.execute(f"CREATE DATABASE {SINK_DB}".encode())
        self.url = make_conninfo(server_url, dbname=SINK_DB)
        with psycopg.connect(self.url, autocommit=True) as conn:
            migrate(conn)
            conn.execute(SINK_SETUP.encode())
        self.settings = load_settings(database_url=self.url, application_name="bench-cdc")
        self.db = Database(self.url, self.settings)
        self.db.pool("chunks")
        self.db.open()

    def drain(
        self, write: Callable[[Chunk[Change]], None] | None = None, chunk_size: int | None = None
    ) -> float:
        """Stream every change up to the source's WAL end; the seconds it took."""
        token = set_current_job(context(new_job(self.url), self.settings, db=self.db))
        try:
            started = time.perf_counter()
            run_pipeline(
                self.pipeline, write or self.write, until="caught_up", chunk_size=chunk_size
            )
            return time.perf_counter() - started
        finally:
            reset_current_job(token)

    @staticmethod
    def write(chunk: Chunk[Change]) -> None:
        mirror(chunk, {f"public.{TABLE}": SINK_TABLE})

    @staticmethod
    def write_batched(chunk: Chunk[Change]) -> None:
        """What a sink written for this table can do: each run of upserts in one INSERT from
        arrays (the last row of each key: a run holds whole rows), each run of deletes in one
        DELETE, instead of a statement per change."""
        with chunk.conn.cursor() as cur:
            for op, run in groupby(chunk.items, key=lambda c: UPSERTS.get(c.op, c.op)):
                changes = list(run)
                if op == "upsert":
                    last = {c.new["id"]: c.new for c in changes if c.new}
                    cur.execute(UPSERT, [[row[col] for row in last.values()] for col in COLUMNS])
                elif op == "delete":
                    cur.execute(DELETE, [[c.key["id"] for c in changes if c.key]])
                else:  # snapshot ranges, truncates: as mirror() applies them
                    for change in changes:
                        apply_change(chunk.conn, SINK_TABLE, change)

    def reset(self) -> None:
        """Empty source and sink tables, with the pipeline caught up on the emptying."""
        with psycopg.connect(self.source_url, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {TABLE}".encode())
        self.drain()
        self.check_equal()

    def check_equal(self) -> None:
        digests = [
            _digest(url, table) for url, table in ((self.source_url, TABLE), (self.url, SINK_TABLE))
        ]
        if digests[0] != digests[1]:
            raise AssertionError(f"sink != source after the pipeline drained: {digests}")

    def close(self) -> None:
        self.db.close()
        with psycopg.connect(self.source_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                [PIPELINE_SLOT],
            )


def _digest(url: str, table: str) -> tuple[int, str]:
    """Rows and an md5 of them in key order: equal digests, equal tables."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY id), ''))"
            f" FROM {table} t".encode()
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


LABELS = {
    "raw": "raw decoding (server: peek, count only)",
    "fetch": "+ fetch to the client",
    "decode": "+ decode (unbroken.cdc.pgoutput)",
    "rows": "+ load rows (RowLoader)",
    "pipeline": f"pipeline + mirror, {SMALL_CHUNK:,} per chunk",
    "pipeline_5000": f"pipeline + mirror, {BIG_CHUNK:,} per chunk (the default)",
    "batched_5000": f"pipeline + unnest sink writes, {BIG_CHUNK:,} per chunk",
}


def report(results: dict[str, Any]) -> str:
    raw = results["raw_changes_s"]["median"]
    lines = []
    for name, label in LABELS.items():
        figure = results.get(f"{name}_changes_s")
        if figure is None:
            continue
        end_to_end = name.startswith(("pipeline", "batched"))
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
    """Called by bench.run: starts its own two servers, the source with wal_level=logical
    (the shared one has replica) and the sink with PostgreSQL's defaults."""
    with throwaway_server(LOGICAL_CONF) as url, throwaway_server({}) as sink_url:
        results = measure(url, sink_url, changes=changes, repeat=repeat)
    say(report(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cdc", description=__doc__.split("\n")[0])
    p.add_argument("--changes", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    run_section(args.changes, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
