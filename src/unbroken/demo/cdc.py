"""`unbroken demo --cdc`: a table's changes streamed into a sink while they are written.

On the embedded server (switched to wal_level=logical, once, with ALTER SYSTEM and a restart)
the demo makes a source database with an `orders` table of 5,000 rows, enqueues the CDC task
of unbroken.demo.cdc_app and starts a worker: the pipeline snapshots the table, then streams.
Meanwhile the demo writes 20,000 changes (inserts, updates, deletes, in small transactions)
and shows both sides' progress. When the writes are done and the sink has caught up, the sink
table must equal the source table row for row; then the job is cancelled and the pipeline's
replication slot dropped, so the server keeps no WAL for it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from unbroken.cdc import drop_slot
from unbroken.db.target import Target
from unbroken.demo.cdc_app import (
    ORDERS,
    PIPELINE,
    SINK_SCHEMA,
    SINK_TABLE,
    SOURCE_DATABASE,
    app,
    stream_orders,
)
from unbroken.demo.run import DEMO_ENV, Workers, say_left_running, worker_log
from unbroken.embedded import LocalServer, wait_until_accepting
from unbroken.errors import ConfigError
from unbroken.ops.store import OperatorStore

console = Console()
SEED_ROWS = 5_000
CHANGES = 20_000
RATE = 2_500  # changes/s the writer aims at: a stream to watch, not a load test
CDC_ENV = {**DEMO_ENV, "UNBROKEN_QUEUES": "cdc", "UNBROKEN_CONCURRENCY": "2"}
_PIPELINE_ROW = (
    b"SELECT state, changes, position::text, lag_bytes FROM unbroken.cdc_pipelines WHERE name = %s"
)
_DIGEST = "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM {} t"


@dataclass
class Written:
    """What the writer thread has committed so far."""

    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    done: bool = False
    error: BaseException | None = None

    @property
    def total(self) -> int:
        return self.inserts + self.updates + self.deletes


def run_cdc_demo(*, timeout: float = 600.0) -> int:
    """Run the CDC demo; return the process exit code (0 when sink == source)."""
    target = app.target()
    console.print(f"[bold]database[/bold]: {target.describe()}", highlight=False)
    try:
        _ensure_logical(target)
        app.migrate()
        source_url = make_conninfo(target.conninfo, dbname=SOURCE_DATABASE)
        _reset(target.conninfo, source_url)
        return _run(target.conninfo, source_url, timeout, worker_log(target.embedded))
    finally:
        app.close()
        if target.embedded:
            say_left_running(LocalServer(app.settings.data_dir))


def _ensure_logical(target: Target) -> None:
    """Logical decoding needs wal_level=logical: set it on the embedded server (it stays so)."""
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        row = conn.execute(b"SHOW wal_level").fetchone()
        if row is not None and row[0] == "logical":
            return
        if not target.embedded:
            raise ConfigError(
                f"--cdc needs wal_level=logical on {target.describe()} (it is {row and row[0]}): "
                "ALTER SYSTEM SET wal_level = logical and restart the server, or use the "
                "embedded one (unset UNBROKEN_DATABASE_URL / DATABASE_URL)"
            )
        conn.execute(b"ALTER SYSTEM SET wal_level = logical")
    LocalServer(app.settings.data_dir).restart("fast")
    wait_until_accepting(target.conninfo)
    console.print(
        "embedded PostgreSQL restarted with wal_level=logical (set with ALTER SYSTEM: it stays)",
        highlight=False,
    )


def _reset(admin_url: str, source_url: str) -> None:
    """A fresh source database with its seed rows, an empty sink, no earlier demo's pipeline."""
    ident = sql.Identifier(SOURCE_DATABASE)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        # an earlier run's slot would keep WAL, and a database with a slot cannot be dropped
        conn.execute(
            b"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            b" WHERE database = %s AND NOT active",
            [SOURCE_DATABASE],
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        for table in ("cdc_dead_letters", "cdc_schema_changes"):
            conn.execute(
                sql.SQL("DELETE FROM unbroken.{} WHERE pipeline = %s").format(
                    sql.Identifier(table)
                ),
                [PIPELINE],
            )
        conn.execute(b"DELETE FROM unbroken.cdc_pipelines WHERE name = %s", [PIPELINE])
        conn.execute(b"DELETE FROM unbroken.jobs WHERE task = %s", [stream_orders.name])
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SINK_SCHEMA))
        )
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SINK_SCHEMA)))
        conn.execute(ORDERS.format(table=SINK_TABLE).encode())
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(ORDERS.format(table="orders").encode())
        conn.execute(
            b"INSERT INTO orders (id, customer, amount, status) SELECT g, 'customer ' || g %% 97,"
            b" (g %% 500) + 0.99, 'new' FROM generate_series(1, %s) g",
            [SEED_ROWS],
        )


def _write(source_url: str, written: Written, stop: threading.Event) -> None:
    """CHANGES changes in transactions of 1 to 10, about RATE a second (the writer thread)."""
    rng = random.Random(15)
    ids = list(range(1, SEED_ROWS + 1))
    next_id = SEED_ROWS + 1
    started = time.monotonic()
    try:
        with psycopg.connect(source_url, autocommit=True) as conn:
            while written.total < CHANGES and not stop.is_set():
                counts = [0, 0, 0]
                with conn.transaction():
                    for _ in range(min(rng.randint(1, 10), CHANGES - written.total)):
                        roll = rng.random()
                        if roll < 0.45 or len(ids) < 100:
                            conn.execute(
                                b"INSERT INTO orders (id, customer, amount, status)"
                                b" VALUES (%s, %s, %s, 'new')",
                                [next_id, f"customer {next_id % 97}", next_id % 500 + 0.99],
                            )
                            ids.append(next_id)
                            next_id += 1
                            counts[0] += 1
                        elif roll < 0.85:
                            conn.execute(
                                b"UPDATE orders SET status = %s, amount = amount + 1,"
                                b" updated_at = now() WHERE id = %s",
                                [rng.choice(("paid", "shipped", "returned")), rng.choice(ids)],
                            )
                            counts[1] += 1
                        else:
                            i = rng.randrange(len(ids))
                            ids[i], ids[-1] = ids[-1], ids[i]
                            conn.execute(b"DELETE FROM orders WHERE id = %s", [ids.pop()])
                            counts[2] += 1
                written.inserts += counts[0]
                written.updates += counts[1]
                written.deletes += counts[2]
                ahead = written.total / RATE - (time.monotonic() - started)
                if ahead > 0:
                    stop.wait(ahead)
    except BaseException as exc:
        written.error = exc
    finally:
        written.done = True


def _digest(url: str, table: str) -> tuple[int, str]:
    """Rows and an md5 of them in key order: equal digests, equal tables."""
    name = sql.Identifier(*table.split("."))
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL(_DIGEST).format(name)).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _run(url: str, source_url: str, timeout: float, log: Path) -> int:
    job_id = stream_orders.enqueue(source_url)
    log.write_text("")
    workers = Workers(url, log, app_ref="unbroken.demo.cdc_app:app", env=CDC_ENV)
    workers.start()
    written = Written()
    stop = threading.Event()
    writer = threading.Thread(target=_write, args=(source_url, written, stop), daemon=True)
    started = time.monotonic()
    equal = False
    try:
        with (
            Progress(
                TextColumn("{task.description:<9}"),
                BarColumn(bar_width=36),
                TextColumn("{task.completed:>7,.0f}/{task.total:,.0f}"),
                TextColumn("{task.fields[note]}"),
                console=console,
                transient=False,
            ) as bars,
            psycopg.connect(url, autocommit=True) as conn,
        ):
            source_bar = bars.add_task("written", total=CHANGES, note="changes to the source")
            sink_bar = bars.add_task(
                "applied", total=SEED_ROWS + CHANGES, note="waiting for the worker"
            )
            writer.start()

            def show(pipeline: tuple[Any, ...] | None, final: bool = False) -> None:
                bars.update(source_bar, completed=written.total)
                if pipeline is None:
                    return
                state, changes, position, lag = pipeline
                lag_text = "-" if lag is None else f"{lag:,} bytes"
                note = f"{state}, position {position or '-'}, lag {lag_text}"
                # the snapshot reads the rows as they are then: fewer than the seed when
                # some were deleted before it reached them
                total = changes if final else max(changes, SEED_ROWS + CHANGES)
                bars.update(sink_bar, completed=changes, total=total, note=note)

            while time.monotonic() - started < timeout and written.error is None:
                show(conn.execute(_PIPELINE_ROW, [PIPELINE]).fetchone())
                if written.done and _digest(source_url, "orders") == _digest(url, SINK_TABLE):
                    equal = True
                    show(conn.execute(_PIPELINE_ROW, [PIPELINE]).fetchone(), final=True)
                    break
                time.sleep(0.25)
    finally:
        stop.set()
        writer.join(timeout=30)
        elapsed = time.monotonic() - started
        app.cancel(job_id)
        _wait_final(url, job_id, 30.0)
        workers.stop()
    logging.getLogger("unbroken.cdc").setLevel(logging.ERROR)  # the report says it
    slot_dropped = drop_slot(source_url, f"unbroken_{PIPELINE}", app.settings)
    with psycopg.connect(url, autocommit=True) as conn:
        reason = "replication slot dropped at the end of `unbroken demo --cdc`"
        OperatorStore(conn, app.settings.schema_name).pipeline_mark_stopped(PIPELINE, reason)
    return _report(url, source_url, written, equal, elapsed, slot_dropped, log)


def _wait_final(url: str, job_id: int, seconds: float) -> None:
    """Until the cancelled job has ended (its worker stopped the stream), at most `seconds`."""
    deadline = time.monotonic() + seconds
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(b"SELECT state::text FROM unbroken.jobs WHERE id = %s", [job_id])
            found = row.fetchone()
            if found is None or found[0] in ("succeeded", "dead", "cancelled"):
                return
            time.sleep(0.2)


def _report(
    url: str,
    source_url: str,
    written: Written,
    equal: bool,
    elapsed: float,
    slot_dropped: bool,
    log: Path,
) -> int:
    source_rows, source_md5 = _digest(source_url, "orders")
    sink_rows, sink_md5 = _digest(url, SINK_TABLE)
    table = Table(title="unbroken demo --cdc: orders streamed into a sink", show_lines=False)
    for col in ("", "rows", "md5 of the rows in key order"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    table.add_row(f"source {SOURCE_DATABASE}.orders", f"{source_rows:,}", source_md5)
    table.add_row(f"sink {SINK_TABLE}", f"{sink_rows:,}", sink_md5)
    console.print(table)
    console.print(
        f"written: {SEED_ROWS:,} rows before the pipeline started (its snapshot), then "
        f"{written.total:,} changes ({written.inserts:,} inserts, {written.updates:,} updates, "
        f"{written.deletes:,} deletes)",
        highlight=False,
    )
    if written.error is not None:
        console.print(f"[red]the writer failed[/red]: {written.error}", highlight=False)
    console.print(
        f"replication slot unbroken_{PIPELINE} {'dropped' if slot_dropped else 'was not there'};"
        " `unbroken pipelines show cdc_demo` shows the pipeline",
        highlight=False,
    )
    ok = equal and source_md5 == sink_md5 and written.error is None
    verdict = (
        f"sink == source: {sink_rows:,} rows identical"
        if ok
        else "CHECK FAILED: the sink differs from the source"
    )
    console.print(
        f"[bold]{verdict}[/bold] in {elapsed:.1f} s; worker log: {log}",
        highlight=False,
        soft_wrap=True,
    )
    return 0 if ok else 1
