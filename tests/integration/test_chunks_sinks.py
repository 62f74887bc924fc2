"""Sinks inside a chunk's transaction: COPY, upsert, SQLAlchemy; and the sync runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chunks_support import arun, async_env, sync_env
from unbroken import AsyncChunk, Chunk, arun_chunks, run_chunks


class Base(DeclarativeBase):
    pass


class Keyed(Base):
    __tablename__ = "keyed"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str | None] = mapped_column(String)
    version: Mapped[int] = mapped_column(Integer, default=1)


class Boom(Exception):
    pass


def test_copy_sends_every_row_with_its_values(database_url: str) -> None:
    with sync_env(database_url) as env:
        sent: list[int] = []

        def write(chunk: Chunk[tuple[int, str | None]]) -> None:
            sent.append(chunk.copy("sink", ["id", "note"], chunk.items))

        notes = [(1, "tab\there"), (2, None), (3, "quote ' \\ and\nnewline"), (4, "é ✓")]
        run_chunks(notes, write, chunk_size=3)

    assert sent == [3, 1]
    assert [tuple(r.values()) for r in env.sql("SELECT id, note FROM sink ORDER BY id")] == notes


def test_upsert_inserts_updates_and_is_idempotent(database_url: str) -> None:
    with sync_env(database_url) as env:
        env.sql("INSERT INTO keyed (id, note, version) VALUES (1, 'old', 1), (2, 'old', 1)")
        changed: list[int] = []

        def write(chunk: Chunk[tuple[int, str, int]]) -> None:
            changed.append(
                chunk.upsert("keyed", ["id", "note", "version"], chunk.items, key=["id"])
            )

        # id 2 twice in one chunk: the later row wins instead of the statement failing
        items = [(2, "new", 2), (3, "new", 1), (2, "newer", 3), (4, "new", 1)]
        run_chunks(items, write, chunk_size=10)
        first = env.sql("SELECT id, note, version FROM keyed ORDER BY id")

        env.new_attempt()  # the same rows again (a re-run): nothing changes
        env.sql(
            "UPDATE unbroken.jobs SET progress = NULL, checkpoint = NULL WHERE id = %s",
            [env.job_id],
        )
        env.enter()
        run_chunks(items, write, chunk_size=10)
        second = env.sql("SELECT id, note, version FROM keyed ORDER BY id")

    assert first == [
        {"id": 1, "note": "old", "version": 1},
        {"id": 2, "note": "newer", "version": 3},
        {"id": 3, "note": "new", "version": 1},
        {"id": 4, "note": "new", "version": 1},
    ]
    assert second == first
    assert changed == [3, 3]


@arun
async def test_upsert_can_leave_existing_rows_alone(database_url: str) -> None:
    async with async_env(database_url) as env:
        env.sql("INSERT INTO keyed (id, note) VALUES (1, 'kept')")

        async def write(chunk: AsyncChunk[tuple[int, str]]) -> None:
            await chunk.upsert("keyed", ["id", "note"], chunk.items, key=["id"], update=[])
            await chunk.upsert("public.keyed", ["id", "note"], [(9, "second upsert")], key=["id"])

        await arun_chunks([(1, "ignored"), (2, "added")], write)

    notes = {r["id"]: r["note"] for r in env.sql("SELECT id, note FROM keyed")}
    assert notes == {1: "kept", 2: "added", 9: "second upsert"}


def test_sqlalchemy_session_commits_with_the_checkpoint(database_url: str) -> None:
    with sync_env(database_url) as env:
        kept: list[Keyed] = []

        def write(chunk: Chunk[int]) -> None:
            session = chunk.session()
            assert chunk.session() is session  # one session per chunk
            rows = [Keyed(id=i, note=f"n{i}") for i in chunk.items]
            session.add_all(rows)
            if chunk.number == 2:
                session.commit()  # only flushes: the chunk's transaction decides
                assert session.scalar(select(Keyed.note).where(Keyed.id == 15)) == "n15"
                raise Boom("after the ORM 'commit'")
            kept.extend(rows)

        with pytest.raises(Boom):
            run_chunks(list(range(30)), write, chunk_size=10)

    assert env.ids("keyed") == list(range(10))  # chunk 2's ORM rows rolled back with it
    assert env.job()["checkpoint"] == 10
    assert [k.note for k in kept] == [f"n{i}" for i in range(10)]  # not expired after commit
    assert env.job()["progress"]["position"] == 10


@arun
async def test_async_sqlalchemy_session(database_url: str) -> None:
    async with async_env(database_url) as env:

        async def write(chunk: AsyncChunk[int]) -> None:
            session = await chunk.session()
            session.add_all([Keyed(id=i, note="async") for i in chunk.items])
            if chunk.number == 1:
                await session.flush()
                got = await session.scalar(select(Keyed).where(Keyed.id == 3))
                assert got is not None
                assert got.version == 1

        done = await arun_chunks(list(range(25)), write, chunk_size=10)

    assert env.ids("keyed") == list(range(25))
    assert done.chunks == 3
    # nothing is left behind on the pooled connections: no session idles in a transaction
    assert env.sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s"
        " AND state LIKE 'idle in transaction%%'",
        [env.app],
    ) == [{"n": 0}]


def test_the_sync_runner_reads_an_async_source(database_url: str) -> None:
    async def feed() -> AsyncIterator[dict[str, Any]]:
        for i in range(35):
            yield {"id": i}

    with sync_env(database_url) as env:

        def write(chunk: Chunk[int]) -> None:
            chunk.copy("sink", ["id"], [(i,) for i in chunk.items])

        done = run_chunks(feed(), write, validate=lambda raw: int(raw["id"]), chunk_size=10)

    assert env.ids() == list(range(35))
    assert (done.position, done.chunks, done.done) == (35, 4, True)
