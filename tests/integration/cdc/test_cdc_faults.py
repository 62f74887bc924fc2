"""CDC pipelines streaming (until cancelled) in a thread while the source misbehaves: it
restarts, it starts late, it stays idle while another database fills the WAL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from apps.harness import wait_until
from cdc_source import CdcSource
from chunks_support import ChunkEnv, chunk_settings, sync_env
from unbroken.cdc import Change, Pipeline, mirror, run_pipeline
from unbroken.chunks import Chunk
from unbroken.context import JobContext, reset_current_job, set_current_job
from unbroken.errors import DatabaseUnavailable, JobCancelled

SINK_DDL = """
CREATE TABLE items_copy (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE applied (n bigserial PRIMARY KEY, op text, id int, lsn bigint, seq int);
"""


def write(chunk: Chunk[Change]) -> None:
    """Mirror, and log every change applied: a change applied twice shows in `applied`."""
    mirror(chunk, {"public.items": "items_copy"})
    with chunk.conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO applied (op, id, lsn, seq) VALUES (%s, %s, %s, %s)",
            [(c.op, (c.key or {}).get("id"), c.lsn, c.seq) for c in chunk.items],
        )


class Streaming:
    """run_pipeline(until="cancelled") in a thread, as a worker runs a sync task."""

    def __init__(self, env: ChunkEnv, pipeline: Pipeline, **ctx_changes: Any) -> None:
        env.new_job()
        self.ctx: JobContext = env.context(**ctx_changes)
        self.pipeline = pipeline
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cdc-stream", daemon=True)

    def _run(self) -> None:
        token = set_current_job(self.ctx)
        try:
            run_pipeline(self.pipeline, write, until="cancelled")
        except JobCancelled:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            reset_current_job(token)

    def stop(self) -> None:
        self.ctx.cancel_requested = True  # what the heartbeat does when the job is cancelled
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the pipeline did not stop"
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def streaming(env: ChunkEnv, pipeline: Pipeline, **ctx_changes: Any) -> Iterator[Streaming]:
    run = Streaming(env, pipeline, **ctx_changes)
    run.thread.start()
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture
def env(database_url: str, cdc_source: CdcSource) -> Iterator[ChunkEnv]:
    cdc_source.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    with sync_env(database_url) as env:
        env.sql(SINK_DDL)
        yield env


def fast(source: CdcSource, **options: Any) -> Pipeline:
    return Pipeline(
        name="items",
        source_url=source.url,
        tables=["items"],
        poll_interval=0.05,
        **options,
    )


def pipeline_state(env: ChunkEnv) -> dict[str, Any]:
    return env.sql("SELECT state, last_error FROM unbroken.cdc_pipelines")[0]


def source_ids(source: CdcSource) -> list[int]:
    return [r[0] for r in source.execute("SELECT id FROM items ORDER BY id")]


def sink_ids(env: ChunkEnv) -> list[int]:
    return env.ids("items_copy")


def assert_applied_once(env: ChunkEnv) -> None:
    twice = env.sql(
        "SELECT op, id, lsn, seq, count(*) AS n FROM applied"
        " GROUP BY op, id, lsn, seq HAVING count(*) > 1"
    )
    assert twice == [], f"changes applied more than once: {twice[:5]}"


def start_slot(env: ChunkEnv, pipeline: Pipeline) -> None:
    """A first run (to the end): the slot exists, and every later row is streamed."""
    env.new_job()
    env.leave()
    env.enter()
    run_pipeline(pipeline, write)


def test_the_stream_survives_a_source_restart(env: ChunkEnv, cdc_source: CdcSource) -> None:
    start_slot(env, fast(cdc_source))
    with streaming(env, fast(cdc_source)):
        for i in range(1, 51):
            cdc_source.execute("INSERT INTO items VALUES (%s, 'before')", [i])
        wait_until(lambda: len(sink_ids(env)) == 50, timeout=30, what="the first rows")
        cdc_source.stop("fast")
        state = wait_until(
            lambda: (row := pipeline_state(env))["state"] == "waiting" and row,
            timeout=30,
            what="the pipeline to notice",
        )
        assert state["last_error"].startswith("lost the source, reconnecting: ")
        cdc_source.start()
        for i in range(51, 101):
            cdc_source.execute("INSERT INTO items VALUES (%s, 'after')", [i])
        wait_until(
            lambda: sink_ids(env) == source_ids(cdc_source), timeout=60, what="sink == source"
        )
    assert_applied_once(env)
    inserts = env.sql("SELECT count(*) AS n FROM applied WHERE op = 'insert'")[0]["n"]
    assert inserts == 100
    assert pipeline_state(env) == {"state": "stopped", "last_error": None}


def test_a_source_down_at_start_is_waited_for(env: ChunkEnv, cdc_source: CdcSource) -> None:
    cdc_source.execute("INSERT INTO items VALUES (1, 'one')")
    cdc_source.stop()
    with streaming(env, fast(cdc_source)):
        wait_until(
            lambda: env.sql("SELECT state FROM unbroken.cdc_pipelines"),
            timeout=30,
            what="the pipeline registered, waiting",
        )
        assert env.sql("SELECT state FROM unbroken.cdc_pipelines")[0]["state"] == "waiting"
        cdc_source.start()
        wait_until(lambda: sink_ids(env) == [1], timeout=60, what="the snapshot")


def test_a_source_that_stays_down_fails_in_one_line(env: ChunkEnv, cdc_source: CdcSource) -> None:
    cdc_source.stop()
    env.new_job()
    env.leave()
    env.enter(env.context(settings=chunk_settings(env.url, startup_wait=1)))
    with pytest.raises(DatabaseUnavailable) as caught:
        run_pipeline(fast(cdc_source), write)
    message = str(caught.value)
    assert message.startswith("CDC source: database not reachable after")
    assert "\n" not in message
    row = env.sql("SELECT state, last_error FROM unbroken.cdc_pipelines")[0]
    assert row == {"state": "failed", "last_error": message}


def retained(source: CdcSource) -> int:
    source.execute("SELECT pg_log_standby_snapshot()")  # what the bgwriter does every 15 s
    return int(
        source.value(
            "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots"
            " WHERE slot_name = 'unbroken_items'"
        )
    )


def test_an_idle_source_does_not_retain_wal_thanks_to_the_heartbeat(
    env: ChunkEnv, cdc_source: CdcSource
) -> None:
    """Writes only in ANOTHER database of the source server: the slot sees nothing to
    decode, and without the heartbeat it would hold all that WAL."""
    other = cdc_source.other_database()
    written = 16 << 20
    with streaming(env, fast(cdc_source, heartbeat_interval=0.2)):
        wait_until(
            lambda: env.sql("SELECT 1 FROM unbroken.cdc_pipelines WHERE position IS NOT NULL"),
            timeout=30,
            what="the first position",
        )
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute("CREATE TABLE filler (id int, pad text)")
            conn.execute(
                "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 80000) AS g"
            )
        assert retained(cdc_source) > written  # the WAL is there...
        wait_until(
            lambda: retained(cdc_source) < written // 4,
            timeout=60,
            interval=0.3,
            what="the slot to let go of the other database's WAL",
        )  # ...and the heartbeats let the slot move past it
    row = env.sql("SELECT retained_wal_bytes FROM unbroken.cdc_pipelines")[0]
    assert row["retained_wal_bytes"] is not None
