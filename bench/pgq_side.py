"""PGQueuer's side of the comparison. Runs ONLY in bench/.venv-pgqueuer (never imports unbroken).

    python -m bench.pgq_side install --dsn URL
    python -m bench.pgq_side enqueue --dsn URL --jobs 20000
    python -m bench.pgq_side worker --batch-size 1000      # one worker, drains the queue

The worker is what `pgq run bench.pgq_side:factory --batch-size N --mode drain` runs:
`pgqueuer.run(factory, ...)` ("as pgq run does, without the CLI") on the CLI's own event
loop runner (uvloop when installed; PGQueuer 1.6 depends on it), with its default
heartbeat, buffers and timeouts. (`pgq run` itself fails in 1.6.0 with the typer that pip
resolves today: its --log-level parser hands a str where an enum is expected.)
`factory` reads PGQ_BENCH_DSN and PGQ_BENCH_DRIVER (asyncpg or psycopg) and registers one
async no-op entrypoint, as PGQueuer's own tools/benchmark.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

ENTRYPOINT = "noop"


async def _driver(dsn: str, kind: str) -> tuple[Any, Any]:
    """(driver, connection) for PGQueuer."""
    if kind == "asyncpg":
        import asyncpg
        from pgqueuer.db import AsyncpgDriver

        conn = await asyncpg.connect(dsn=dsn)
        return AsyncpgDriver(conn), conn
    import psycopg
    from pgqueuer.db import PsycopgDriver

    aconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    return PsycopgDriver(aconn), aconn


@asynccontextmanager
async def factory() -> AsyncIterator[Any]:
    """The `pgq run` factory: one PgQueuer on one connection, one no-op entrypoint."""
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    driver, conn = await _driver(os.environ["PGQ_BENCH_DSN"], os.environ["PGQ_BENCH_DRIVER"])
    pgq = PgQueuer(driver)

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        return None

    try:
        yield pgq
    finally:
        await conn.close()


def worker(batch_size: int) -> None:
    """What `pgq run bench.pgq_side:factory --batch-size N --mode drain` does."""
    import pgqueuer
    from pgqueuer.adapters.cli.cli import asyncio_run
    from pgqueuer.core import logconfig
    from pgqueuer.domain import types

    logconfig.setup_fancy_logger(logconfig.LogLevel.WARNING)
    asyncio_run(pgqueuer.run(factory, batch_size=batch_size, mode=types.QueueExecutionMode.drain))


async def install(dsn: str) -> None:
    from pgqueuer.queries import Queries

    driver, conn = await _driver(dsn, "asyncpg")
    try:
        queries = Queries(driver)
        if not await queries.schema_is_installed():
            await queries.install()
    finally:
        await conn.close()


async def enqueue(dsn: str, jobs: int, batch: int) -> None:
    """Empty the queue and its log, then enqueue `jobs` no-op jobs in bulk."""
    from pgqueuer.queries import Queries

    driver, conn = await _driver(dsn, "asyncpg")
    try:
        queries = Queries(driver)
        await queries.clear_queue()
        await queries.clear_queue_log()
        await queries.clear_statistics_log()
        for start in range(0, jobs, batch):
            n = min(batch, jobs - start)
            await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgq_side")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install")
    p_install.add_argument("--dsn", required=True)
    p_enqueue = sub.add_parser("enqueue")
    p_enqueue.add_argument("--dsn", required=True)
    p_enqueue.add_argument("--jobs", type=int, required=True)
    p_enqueue.add_argument("--batch", type=int, default=10_000)
    p_worker = sub.add_parser("worker")
    p_worker.add_argument("--batch-size", type=int, required=True)
    sub.add_parser("version")
    args = parser.parse_args(argv)
    if args.command == "install":
        asyncio.run(install(args.dsn))
    elif args.command == "enqueue":
        asyncio.run(enqueue(args.dsn, args.jobs, args.batch))
    elif args.command == "worker":
        worker(args.batch_size)
    else:
        import pgqueuer

        print(pgqueuer.__version__, sys.version.split()[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
