"""Chunks: rows per second of a checkpointed chunked load against a raw COPY (the floor).

The same rows (generated in memory beforehand, so neither side pays for a source) go into
the same unindexed table on the same server, either

- raw: one COPY of every row in one transaction, nothing else; or
- chunked: `run_chunks` / `arun_chunks` with `chunk.copy(...)`, so every chunk also
  runs the lease-fenced UPDATE that saves checkpoint and progress, and commits on its own
  (each commit waits for its WAL flush when the server runs with synchronous_commit on).

at chunk sizes 100, 500, 5,000 and 50,000. Each chunked load is paired with a raw COPY just
before it (each after a TRUNCATE and a CHECKPOINT); the verdict takes the median ratio of the
pairs. Target (issue 4): chunked >= 80% of raw COPY at 5,000 rows per chunk.

    python -m bench.chunks                       # UNBROKEN_DATABASE_URL, else the embedded server
    python -m bench.chunks --rows 100000 --repeat 5 --kinds sync
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from bench.common import Repeated, fmt, progress, say, table, verdict
from unbroken import AsyncChunk, Chunk, arun_chunks, run_chunks
from unbroken.context import JobContext, reset_current_job, set_current_job
from unbroken.db._async.pool import AsyncDatabase
from unbroken.db._sync.pool import Database
from unbroken.migrations import migrate
from unbroken.settings import Settings, load_settings

if TYPE_CHECKING:
    from bench.server import BenchServer

SIZES = (100, 500, 5_000, 50_000)
TARGET_SIZE, TARGET_FRACTION = 5_000, 0.80
TABLE = "bench_chunk_rows"
COLUMNS = ("id", "name", "amount", "created_at", "payload")
Row = tuple[int, str, float, datetime, str]

SETUP = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
    id bigint NOT NULL, name text NOT NULL, amount double precision,
    created_at timestamptz NOT NULL, payload text
);
"""


def make_rows(count: int) -> list[Row]:
    created = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        (i, f"issue-{i}", i * 0.25, created, "lorem ipsum dolor sit amet " * 2)
        for i in range(count)
    ]


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}".encode())
        conn.execute("CHECKPOINT")


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {TABLE}".encode()).fetchone()
    return int(row[0]) if row else 0


def raw_copy_sync(url: str, rows: list[Row]) -> float:
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN".encode()) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


async def raw_copy_async(url: str, rows: list[Row]) -> float:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        started = time.perf_counter()
        async with (
            conn.cursor() as cur,
            cur.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN".encode()) as copy,
        ):
            for row in rows:
                await copy.write_row(row)
        await conn.commit()
        return time.perf_counter() - started


def new_job(url: str) -> tuple[int, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO unbroken.jobs (task, state, attempt, worker_id, lease_expires_at,"
            " attempted_at) VALUES ('bench_chunks', 'running', 1, 'bench', now() + interval"
            " '1 hour', now()) RETURNING id, attempted_at::text"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def context(job: tuple[int, str], settings: Settings, **pools: Any) -> JobContext:
    return JobContext(
        job_id=job[0], attempt=1, max_attempts=1, worker_id="bench", task="bench_chunks",
        queue="default", args={}, checkpoint=None, chunk_size=None, rescues=0, claim=job[1],
        settings=settings, schema="unbroken", **pools,
    )  # fmt: skip


def chunked_sync(
    url: str, db: Database, settings: Settings, rows: list[Row], size: int, flush: bool
) -> float:
    token = set_current_job(context(new_job(url), settings, db=db))

    def write(chunk: Chunk[Row]) -> None:
        chunk.copy(TABLE, COLUMNS, chunk.items)

    try:
        started = time.perf_counter()
        done = run_chunks(rows, write, chunk_size=size, flush_each_chunk=flush)
        elapsed = time.perf_counter() - started
    finally:
        reset_current_job(token)
    assert done.done
    assert done.processed == len(rows)
    return elapsed


async def chunked_async(
    url: str, adb: AsyncDatabase, settings: Settings, rows: list[Row], size: int, flush: bool
) -> float:
    token = set_current_job(context(new_job(url), settings, adb=adb))

    async def write(chunk: AsyncChunk[Row]) -> None:
        await chunk.copy(TABLE, COLUMNS, chunk.items)

    try:
        started = time.perf_counter()
        done = await arun_chunks(rows, write, chunk_size=size, flush_each_chunk=flush)
        elapsed = time.perf_counter() - started
    finally:
        reset_current_job(token)
    assert done.done
    assert done.processed == len(rows)
    return elapsed


def measure(
    url: str,
    *,
    rows: int,
    repeat: int,
    kinds: Sequence[str],
    sizes: Sequence[int] = SIZES,
    flush_each_chunk: bool = False,
) -> dict[str, Any]:
    """Every chunked run is paired with a raw COPY just before it: on a shared machine the
    ratio of a pair is steadier than either rate, so the verdict uses the median ratio."""
    data = make_rows(rows)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute(SETUP.encode())
        row = conn.execute("SHOW synchronous_commit").fetchone()
    settings = load_settings(database_url=url, application_name="bench-chunks", pool_min_size=1)
    results: dict[str, Any] = {
        "rows": rows,
        "repeat": repeat,
        "synchronous_commit": row[0] if row else None,
        "flush_each_chunk": flush_each_chunk,
        "table": SETUP.strip(),
    }
    for kind in kinds:
        raw_rates = {size: Repeated() for size in sizes}
        chunked_rates = {size: Repeated() for size in sizes}
        ratios = {size: Repeated() for size in sizes}
        db = Database(url, settings) if kind == "sync" else None
        adb = AsyncDatabase(url, settings) if kind == "async" else None
        loop = asyncio.new_event_loop()
        try:
            if db is not None:
                db.pool("chunks")
                db.open()
            if adb is not None:
                adb.pool("chunks")
                loop.run_until_complete(adb.open())
            for run in range(repeat):
                progress(f"chunks {kind}: run {run + 1}/{repeat}")
                for size in sizes:
                    reset(url)
                    raw = (
                        raw_copy_sync(url, data)
                        if db is not None
                        else loop.run_until_complete(raw_copy_async(url, data))
                    )
                    reset(url)
                    if db is not None:
                        chunked = chunked_sync(url, db, settings, data, size, flush_each_chunk)
                    else:
                        assert adb is not None
                        chunked = loop.run_until_complete(
                            chunked_async(url, adb, settings, data, size, flush_each_chunk)
                        )
                    assert count(url) == rows
                    raw_rates[size].add(rows / raw)
                    chunked_rates[size].add(rows / chunked)
                    ratios[size].add(raw / chunked)
        finally:
            if db is not None:
                db.close()
            if adb is not None:
                loop.run_until_complete(adb.close())
            loop.close()
        results[kind] = {
            str(size): {
                "raw_copy_rows_s": raw_rates[size].as_json(),
                "chunked_rows_s": chunked_rates[size].as_json(),
                "fraction_of_raw": ratios[size].as_json(),
            }
            for size in sizes
        }
    return results


def report(results: dict[str, Any]) -> str:
    out = []
    for kind in ("sync", "async"):
        if kind not in results:
            continue
        lines = []
        for size, fig in results[kind].items():
            fraction = fig["fraction_of_raw"]["median"]
            ok = fraction >= TARGET_FRACTION if int(size) == TARGET_SIZE else None
            lines.append(
                [
                    fmt(int(size)),
                    fmt(fig["chunked_rows_s"]["median"]),
                    fmt(fig["raw_copy_rows_s"]["median"]),
                    f"{fraction:.0%}",
                    f"{fig['fraction_of_raw']['best']:.0%}",
                    verdict(ok),
                ]
            )
        out.append(
            table(
                f"chunks ({kind}): {results['rows']:,} rows per load, {results['repeat']} pairs "
                f"per size, synchronous_commit={results['synchronous_commit']}, "
                f"flush_each_chunk={results['flush_each_chunk']}",
                [
                    "rows/chunk",
                    "chunked rows/s",
                    "raw COPY rows/s",
                    "of raw (median)",
                    "(best)",
                    f">= {TARGET_FRACTION:.0%} at {TARGET_SIZE:,}",
                ],
                lines,
            )
        )
    return "\n".join(out)


def run_section(server: BenchServer, rows: int = 200_000, repeat: int = 3) -> dict[str, Any]:
    """Called by bench.run with its throwaway server."""
    url = server.fresh_database("bench_chunks")
    results = measure(url, rows=rows, repeat=repeat, kinds=["sync", "async"])
    say(report(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chunks", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--kinds", default="sync,async", help="sync,async")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="rows per chunk")
    p.add_argument(
        "--flush-each-chunk", action="store_true", help="every chunk commit waits for its flush"
    )
    args = p.parse_args(argv)
    from unbroken.db.target import resolve_target

    target = resolve_target(load_settings())
    progress(f"chunks: on {target.describe()}")
    results = measure(
        target.conninfo,
        rows=args.rows,
        repeat=args.repeat,
        kinds=args.kinds.split(","),
        sizes=[int(x) for x in args.sizes.split(",")],
        flush_each_chunk=args.flush_each_chunk,
    )
    say(report(results))
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}".encode())
        conn.execute("DELETE FROM unbroken.jobs WHERE task = 'bench_chunks'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
