"""CDC pipelines in process, on real servers: the source (cdc_source, wal_level=logical) and
the sink (the session server's test database), a job context as the executor makes one."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cdc_source import CdcSource
from chunks_support import ChunkEnv, chunk_settings, sync_env
from unbroken.cdc import Change, Pipeline, drop_slot, mirror, run_pipeline
from unbroken.cdc.source import SourceDB
from unbroken.chunks import Chunk
from unbroken.errors import JobCancelled, PositionLost

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
    confirmed = cdc_source.value(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
        " WHERE slot_name = 'unbroken_items'"
    )
    assert confirmed == row["position"]  # advanced to exactly what the sink committed
    assert row["lag_bytes"] is not None
    assert row["retained_wal_bytes"] is not None


def test_a_dropped_slot_under_a_stored_position_is_resnapshotted_deletes_included(
    env: ChunkEnv, cdc_source: CdcSource, caplog: pytest.LogCaptureFixture
) -> None:
    cdc_source.execute(
        "INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 300) AS g"
    )
    pipeline = pipe(cdc_source, snapshot_chunk=100)
    drain(env, pipeline)
    assert sink_rows(env) == source_rows(cdc_source)
    cdc_source.execute("SELECT pg_drop_replication_slot('unbroken_items')")
    # made while the slot is gone: no stream will ever show them
    cdc_source.execute("DELETE FROM items WHERE id % 3 = 0 OR id > 250")
    cdc_source.execute("UPDATE items SET name = 'changed' WHERE id % 10 = 1")
    cdc_source.execute("INSERT INTO items VALUES (1000, 'late', 1)")
    with caplog.at_level(logging.WARNING, logger="unbroken.cdc"):
        drain(env, pipeline)
    assert "does not exist any more; re-snapshotting" in caplog.text
    assert sink_rows(env) == source_rows(cdc_source)
    cdc_source.execute("DELETE FROM items WHERE id = 2")
    drain(env, pipeline)  # and the stream goes on from the new slot
    assert sink_rows(env) == source_rows(cdc_source)


def test_a_slot_moved_past_the_stored_position_is_detected(
    env: ChunkEnv, cdc_source: CdcSource
) -> None:
    """PostgreSQL 15+ silently skips ahead when asked for changes before the slot's
    confirmed position: the pipeline compares them itself."""
    pipeline = pipe(cdc_source)
    drain(env, pipeline)
    cdc_source.execute("INSERT INTO items VALUES (1, 'skipped', 1)")
    cdc_source.execute("SELECT pg_replication_slot_advance('unbroken_items', pg_current_wal_lsn())")
    drain(env, pipeline)
    assert sink_rows(env) == [(1, "skipped", 1)]  # re-snapshotted, not lost


def test_on_gap_fail_stops_in_one_line_and_records_it(env: ChunkEnv, cdc_source: CdcSource) -> None:
    pipeline = pipe(cdc_source, on_gap="fail")
    drain(env, pipeline)
    cdc_source.execute("SELECT pg_drop_replication_slot('unbroken_items')")
    with pytest.raises(PositionLost) as caught:
        drain(env, pipeline)
    message = str(caught.value)
    assert "\n" not in message
    assert "replication slot unbroken_items does not exist any more" in message
    row = pipeline_row(env)
    assert row["state"] == "failed"
    assert row["last_error"] == message


def test_a_schema_change_is_recorded_and_the_stream_goes_on(
    env: ChunkEnv, cdc_source: CdcSource, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = pipe(cdc_source)
    cdc_source.execute("INSERT INTO items VALUES (1, 'a', 1)")
    drain(env, pipeline)
    cdc_source.execute("INSERT INTO items VALUES (2, 'b', 2)")
    cdc_source.execute("ALTER TABLE items ADD COLUMN note text")
    cdc_source.execute("INSERT INTO items VALUES (3, 'c', 3, 'noted')")
    env.sql("ALTER TABLE items_copy ADD COLUMN note text")
    with caplog.at_level(logging.WARNING, logger="unbroken.cdc"):
        drain(env, pipeline)
    assert "the columns of public.items changed" in caplog.text
    changes = env.sql("SELECT relation, before, after FROM unbroken.cdc_schema_changes")
    assert len(changes) == 1
    assert changes[0]["relation"] == "public.items"
    assert [c[0] for c in changes[0]["before"]] == ["id", "name", "qty"]
    assert [c[0] for c in changes[0]["after"]] == ["id", "name", "qty", "note"]
    assert sink_rows(env) == source_rows(cdc_source)
    drain(env, pipeline)  # known now: not recorded again
    assert len(env.sql("SELECT * FROM unbroken.cdc_schema_changes")) == 1


def test_a_change_the_sink_refuses_goes_to_the_dead_letters(
    env: ChunkEnv, cdc_source: CdcSource
) -> None:
    env.sql("ALTER TABLE items_copy ADD CHECK (qty >= 0)")
    pipeline = pipe(cdc_source)
    drain(env, pipeline)
    cdc_source.execute("INSERT INTO items VALUES (1, 'good', 1), (2, 'bad', -1), (3, 'good', 3)")
    drain(env, pipeline)
    assert sink_rows(env) == [(1, "good", 1), (3, "good", 3)]
    dead = env.sql(
        "SELECT d.relation, d.change, d.error, d.lsn <= p.position AS behind"
        " FROM unbroken.cdc_dead_letters AS d"
        " JOIN unbroken.cdc_pipelines AS p ON p.name = d.pipeline"
    )
    assert len(dead) == 1
    assert dead[0]["relation"] == "public.items"
    assert dead[0]["change"]["new"] == {"id": 2, "name": "bad", "qty": -1}
    assert "CheckViolation" in dead[0]["error"]
    assert dead[0]["behind"]  # the stream went on past it


class Stop(JobCancelled):
    """What a worker stopping mid-run does to a task: the run ends between two chunks."""


@pytest.mark.parametrize("resume", ["same job, next attempt", "new job"])
def test_a_run_stopped_inside_a_source_transaction_resumes_after_its_last_change(
    env: ChunkEnv, cdc_source: CdcSource, resume: str
) -> None:
    """One source transaction of 100 rows, chunks of 30: the run stops after chunk 2, the
    checkpoint is inside the transaction; the next run applies rows 61.. exactly once."""
    env.sql("CREATE TABLE applied (id int, op text)")
    pipeline = pipe(cdc_source)
    drain(env, pipeline)
    cdc_source.execute("INSERT INTO items SELECT g, 'n', g FROM generate_series(1, 100) AS g")
    chunks = 0

    def stop_after_two(chunk: Chunk[Change]) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 3:
            raise Stop("stopping")
        write(chunk)
        chunk.conn.execute(
            b"INSERT INTO applied SELECT unnest(%s::int[]), 'insert'",
            [[c.key["id"] for c in chunk.items if c.key]],
        )

    env.new_job()
    env.leave()
    env.enter()
    with pytest.raises(Stop):
        run_pipeline(pipeline, stop_after_two, chunk_size=30)
    assert pipeline_row(env)["state"] == "stopped"
    assert pipeline_row(env)["checkpoint"]["skip"] == 60
    if resume == "new job":
        env.new_job()
    else:
        env.new_attempt()
    env.leave()
    env.enter()
    run_pipeline(pipeline, stop_after_two, chunk_size=30)
    ids = [r["id"] for r in env.sql("SELECT id FROM applied ORDER BY id")]
    assert ids == list(range(1, 101))
    assert sink_rows(env) == source_rows(cdc_source)
    assert "skip" not in pipeline_row(env)["checkpoint"]


def test_a_backfill_is_consistent_with_changes_made_while_it_runs(
    env: ChunkEnv, cdc_source: CdcSource
) -> None:
    """While the snapshot is read chunk by chunk, the source keeps changing rows the
    backfill has read, has not read yet, and is reading: the sink still ends == source."""
    cdc_source.execute(
        "INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 1000) AS g"
    )
    pipeline = pipe(cdc_source, snapshot_chunk=100)
    seen = 0

    def meddle(chunk: Chunk[Change]) -> None:
        nonlocal seen
        write(chunk)
        snapshots = [c for c in chunk.items if c.op == "snapshot"]
        if snapshots and seen < 5:
            seen += 1
            k = int(snapshots[-1].key["id"])  # type: ignore[index]
            cdc_source.execute("UPDATE items SET qty = -qty WHERE id %% 10 = %s", [seen])
            cdc_source.execute(
                "DELETE FROM items WHERE id IN (%s, %s, %s)", [k - 1, k + 1, k + 150]
            )
            cdc_source.execute("INSERT INTO items VALUES (%s, 'new', 0)", [2000 + seen])

    env.new_job()
    env.leave()
    env.enter()
    run_pipeline(pipeline, meddle, chunk_size=40)
    drain(env, pipeline)  # the changes made by the last chunk's writer
    assert seen == 5
    assert sink_rows(env) == source_rows(cdc_source)


def test_changes_between_a_backfill_select_and_its_high_watermark_win(
    env: ChunkEnv, cdc_source: CdcSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DBLog's race, made certain: right after each chunk's SELECT, before its high
    watermark, the source updates one row the SELECT returned and deletes another. The
    stale rows must lose to the stream's newer changes."""
    cdc_source.execute(
        "INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 300) AS g"
    )
    select = SourceDB.select_chunk
    raced: list[int] = []

    def racing(self: SourceDB, *args: Any) -> list[tuple[str | None, ...]]:
        rows = select(self, *args)  # as text, id first
        if len(rows) >= 2:
            first, second = int(rows[0][0] or 0), int(rows[1][0] or 0)
            cdc_source.execute("UPDATE items SET name = 'raced' WHERE id = %s", [first])
            cdc_source.execute("DELETE FROM items WHERE id = %s", [second])
            raced.append(first)
        return rows

    monkeypatch.setattr(SourceDB, "select_chunk", racing)
    drain(env, pipe(cdc_source, snapshot_chunk=100))
    assert raced == [1, 101, 201]
    assert sink_rows(env) == source_rows(cdc_source)


def test_retained_wal_is_recorded_warned_about_and_drop_slot_lets_it_go(
    env: ChunkEnv, cdc_source: CdcSource, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = pipe(cdc_source, retained_wal_warning=1)
    with caplog.at_level(logging.WARNING, logger="unbroken.cdc"):
        drain(env, pipeline)
    assert "retains 0 MiB of WAL on the source (over 0 MiB)" in caplog.text
    assert pipeline_row(env)["retained_wal_bytes"] > 0
    settings = chunk_settings(env.url)
    assert drop_slot(cdc_source.url, "unbroken_items", settings) is True
    assert drop_slot(cdc_source.url, "unbroken_items", settings) is False
    assert cdc_source.value("SELECT count(*) FROM pg_replication_slots") == 0


def test_a_stopped_backfill_resumes_after_its_last_committed_row(
    env: ChunkEnv, cdc_source: CdcSource
) -> None:
    cdc_source.execute("INSERT INTO items SELECT g, 'n', g FROM generate_series(1, 500) AS g")
    env.sql("CREATE TABLE applied (id int, op text)")
    pipeline = pipe(cdc_source, snapshot_chunk=100)
    chunks = 0

    def stop_at_five(chunk: Chunk[Change]) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 5:
            raise Stop("stopping")
        write(chunk)
        chunk.conn.execute(
            b"INSERT INTO applied SELECT unnest(%s::int[]), 'snapshot'",
            [[c.key["id"] for c in chunk.items if c.op == "snapshot" and c.key]],
        )

    env.new_job()
    env.leave()
    env.enter()
    with pytest.raises(Stop):
        run_pipeline(pipeline, stop_at_five, chunk_size=30)
    row = pipeline_row(env)
    # chunk 4 ended with the first backfill chunk's last row (the stream had caught up)
    assert row["checkpoint"]["backfill"] == {"tables": ["public.items"], "after": ["100"]}
    assert row["state"] == "stopped"
    env.new_job()
    env.leave()
    env.enter()
    run_pipeline(pipeline, stop_at_five, chunk_size=30)
    ids = [r["id"] for r in env.sql("SELECT id FROM applied ORDER BY id")]
    assert ids == list(range(1, 501))  # rows 1-100 were not read again
    assert sink_rows(env) == source_rows(cdc_source)
    assert pipeline_row(env)["checkpoint"]["backfill"] is None


def test_a_value_that_cannot_be_decoded_goes_to_the_dead_letters(
    env: ChunkEnv, cdc_source: CdcSource
) -> None:
    """psycopg cannot load the date 'infinity' into a Python date: that change is set
    aside with its raw text and the error, the others of its transaction are applied;
    so is such a row read by the backfill."""
    cdc_source.execute("ALTER TABLE items ADD COLUMN due date")
    env.sql("ALTER TABLE items_copy ADD COLUMN due date")
    cdc_source.execute("INSERT INTO items VALUES (10, 'snap', 10, 'infinity'), (11, 's', 11, NULL)")
    pipeline = pipe(cdc_source)
    drain(env, pipeline)
    [dead] = env.sql("SELECT change, error FROM unbroken.cdc_dead_letters")
    assert dead["change"]["new"] == {"id": "10", "name": "snap", "qty": "10", "due": "infinity"}
    assert dead["change"]["op"] == "snapshot"
    assert sink_rows(env) == [(11, "s", 11)]
    env.sql("DELETE FROM unbroken.cdc_dead_letters")
    cdc_source.execute("DELETE FROM items")
    drain(env, pipeline)
    cdc_source.execute(
        "INSERT INTO items VALUES (1, 'ok', 1, '2026-01-01'), (2, 'never', 2, 'infinity'),"
        " (3, 'ok', 3, NULL)"
    )
    drain(env, pipeline)
    assert sink_rows(env) == [(1, "ok", 1), (3, "ok", 3)]
    [dead] = env.sql("SELECT relation, change, error FROM unbroken.cdc_dead_letters")
    assert dead["relation"] == "public.items"
    assert dead["change"]["new"] == {"id": "2", "name": "never", "qty": "2", "due": "infinity"}
    assert "infinity" in dead["error"] or "too large" in dead["error"]


def test_a_table_added_to_a_pipeline_is_backfilled(env: ChunkEnv, cdc_source: CdcSource) -> None:
    cdc_source.execute("INSERT INTO items VALUES (1, 'a', 1)")
    drain(env, pipe(cdc_source))
    cdc_source.execute("CREATE TABLE more (id int PRIMARY KEY, name text NOT NULL, qty int)")
    cdc_source.execute("INSERT INTO more VALUES (7, 'older than its pipeline', 0)")
    env.sql("CREATE TABLE more_copy (id int PRIMARY KEY, name text NOT NULL, qty int)")
    both = Pipeline(name="items", source_url=cdc_source.url, tables=["items", "more"])
    env.new_job()
    env.leave()
    env.enter()
    run_pipeline(both, lambda c: mirror(c, {**TABLES, "public.more": "more_copy"}))
    copied = env.sql("SELECT id, name FROM more_copy")
    assert copied == [{"id": 7, "name": "older than its pipeline"}]
    assert sink_rows(env) == source_rows(cdc_source)
