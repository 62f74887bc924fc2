"""CDC pipelines in process, on real servers: the source (cdc_source, wal_level=logical) and
the sink (the session server's test database), a job context as the executor makes one."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from cdc_source import CdcSource
from chunks_support import ChunkEnv, sync_env
from unbroken.cdc import Change, Pipeline, mirror, run_pipeline
from unbroken.chunks import Chunk
from unbroken.errors import PositionLost

SOURCE_DDL = "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int)"
SINK_DDL = "CREATE TABLE items_copy (id int PRIMARY KEY, name text NOT NULL, qty int)"
TABLES = {"public.items": "items_copy"}


def write(chunk: Chunk[Change]) -> None:
    mirror(chunk, TABLES)


def source_rows(source: CdcSource) -> list[tuple[Any, ...]]:
    return source.execute("SELECT id, name, qty FROM items ORDER BY id")


def sink_rows(env: ChunkEnv) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in env.sql("SELECT id, name, qty FROM items_copy ORDER BY id")]


def pipe(source: CdcSource, **options: Any) -> Pipeline:
    return Pipeline(name="items", source_url=source.url, tables=["items"], **options)


def drain(env: ChunkEnv, pipeline: Pipeline, **options: Any) -> Any:
    """One run to the source's current end, as a fresh job (a periodic task would be one)."""
    env.new_job()
    env.leave()
    env.enter()
    return run_pipeline(pipeline, write, **options)


def pipeline_row(env: ChunkEnv) -> dict[str, Any]:
    return env.sql("SELECT * FROM unbroken.cdc_pipelines WHERE name = 'items'")[0]


@pytest.fixture
def env(database_url: str, cdc_source: CdcSource) -> Any:
    cdc_source.execute(SOURCE_DDL)
    with sync_env(database_url) as env:
        env.sql(SINK_DDL)
        yield env


def test_snapshot_then_stream_make_the_sink_equal_the_source(
    env: ChunkEnv, cdc_source: CdcSource
) -> None:
    cdc_source.execute(
        "INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 2500) AS g"
    )
    pipeline = pipe(cdc_source, snapshot_chunk=1000)
    drain(env, pipeline)
    assert sink_rows(env) == source_rows(cdc_source)
    row = pipeline_row(env)
    assert row["state"] == "streaming"
    assert row["changes"] == 2500
    cdc_source.execute("INSERT INTO items VALUES (3000, 'new', 1)")
    cdc_source.execute("UPDATE items SET qty = qty + 100 WHERE id % 7 = 0")
    cdc_source.execute("DELETE FROM items WHERE id % 5 = 0")
    cdc_source.execute("UPDATE items SET id = 4000 WHERE id = 1")  # a key change
    drain(env, pipeline)
    assert sink_rows(env) == source_rows(cdc_source)
    row = pipeline_row(env)
    slot = cdc_source.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'unbroken_items'"
    )
    assert slot[0][0] == row["position"]  # advanced to exactly what the sink committed
    assert row["lag_bytes"] is not None and row["retained_wal_bytes"] is not None
