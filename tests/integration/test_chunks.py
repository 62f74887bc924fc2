"""The chunk runner against a real PostgreSQL: atomic chunks, resume, fencing, sizes, progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from chunks_support import arun, async_env
from pg import Faults
from unbroken import AsyncChunk, BadRecords, BadRecordsExceeded, Page, arun_chunks, read_progress
from unbroken.context import current_job
from unbroken.errors import JobCancelled, LeaseLost


def rows(chunk: AsyncChunk[int]) -> list[tuple[int, str]]:
    return [(i, f"item {i}") for i in chunk.items]


async def copy_ids(chunk: AsyncChunk[int]) -> None:
    await chunk.copy("sink", ["id", "note"], rows(chunk))


class Boom(Exception):
    pass


@arun
async def test_each_chunk_commits_its_rows_with_checkpoint_and_progress(database_url: str) -> None:
    async with async_env(database_url) as env:
        seen: list[tuple[int, int, Any]] = []

        async def write(chunk: AsyncChunk[int]) -> None:
            seen.append((chunk.number, chunk.position, chunk.checkpoint))
            await copy_ids(chunk)

        done = await arun_chunks(list(range(250)), write, chunk_size=100)

    assert seen == [(1, 0, 100), (2, 100, 200), (3, 200, 250)]
    assert env.ids() == list(range(250))
    assert env.positions() == [100, 200, 250]
    job = env.job()
    assert job["checkpoint"] == 250
    assert job["progress"]["processed"] == 250
    assert job["progress"]["total"] == 250
    assert job["progress"]["done"] is True
    assert done.done
    assert done.position == 250
    assert done.chunks == 3


@arun
async def test_a_failing_chunk_leaves_neither_its_rows_nor_its_checkpoint(
    database_url: str,
) -> None:
    async with async_env(database_url) as env:

        async def write(chunk: AsyncChunk[int]) -> None:
            await copy_ids(chunk)  # written, then the chunk fails: all of it must go
            if chunk.number == 3:
                raise Boom("chunk 3 fails after writing")

        with pytest.raises(Boom):
            await arun_chunks(list(range(500)), write, chunk_size=100)

    assert env.ids() == list(range(200))
    job = env.job()
    assert job["checkpoint"] == 200
    assert job["progress"]["position"] == 200
    assert job["progress"]["done"] is False
    assert env.positions() == [100, 200]


@arun
async def test_resume_after_a_failed_attempt_writes_nothing_twice(database_url: str) -> None:
    """A plain iterable cannot seek: the next attempt skips the items already committed."""
    async with async_env(database_url) as env:
        calls = 0

        async def flaky(chunk: AsyncChunk[int]) -> None:
            nonlocal calls
            calls += 1
            if calls == 4:
                raise Boom("the task crashes in chunk 4")
            await copy_ids(chunk)

        with pytest.raises(Boom):
            await arun_chunks(iter(range(1000)), flaky, chunk_size=100)
        assert env.ids() == list(range(300))

        env.new_attempt()
        env.enter()  # the executor's context for attempt 2
        firsts: list[int] = []

        async def write(chunk: AsyncChunk[int]) -> None:
            firsts.append(chunk.items[0])
            await copy_ids(chunk)

        done = await arun_chunks(iter(range(1000)), write, chunk_size=100)

    assert firsts == list(range(300, 1000, 100))
    assert env.ids() == list(range(1000))  # every item once: no gap, no duplicate
    assert done.position == 1000
    assert done.processed == 1000
    positions = env.positions()
    assert positions == sorted(positions)  # checkpoints never went backwards


@arun
async def test_a_seekable_source_is_given_the_checkpoint(database_url: str) -> None:
    items: list[dict[str, Any]] = [{"id": i, "name": f"n{i}"} for i in range(1, 101)]
    asked: list[Any] = []

    async def source(after: int | None) -> AsyncIterator[dict[str, Any]]:
        asked.append(after)
        for item in items:
            if after is None or item["id"] > after:
                await asyncio.sleep(0)  # a slow API
                yield item

    async with async_env(database_url) as env:

        async def write(chunk: AsyncChunk[dict[str, Any]]) -> None:
            if chunk.number == 3 and env.attempt == 1:
                raise Boom
            await chunk.copy("sink", ["id", "note"], [(i["id"], i["name"]) for i in chunk.items])

        with pytest.raises(Boom):
            await arun_chunks(source, write, chunk_size=15, cursor=lambda item: item["id"])
        env.new_attempt()
        env.enter()
        await arun_chunks(source, write, chunk_size=15, cursor=lambda item: item["id"])

    assert asked == [None, 30]  # the second attempt started after item 30, no skipping
    assert env.ids() == list(range(1, 101))
    assert env.job()["checkpoint"] == 100


@arun
async def test_pages_resume_inside_a_page(database_url: str) -> None:
    """Pages of 30 and chunks of 20: a checkpoint can fall inside a page."""
    asked: list[Any] = []

    def pages(cursor: int | None) -> Iterator[Page[int]]:
        asked.append(cursor)
        start = cursor or 0
        for page_start in range(start, 120, 30):
            yield Page(list(range(page_start, page_start + 30)), page_start + 30, total=120)

    async with async_env(database_url) as env:

        async def write(chunk: AsyncChunk[int]) -> None:
            if chunk.number == 3 and env.attempt == 1:
                raise Boom
            await copy_ids(chunk)

        with pytest.raises(Boom):
            await arun_chunks(pages, write, chunk_size=20)
        job = env.job()  # chunk 2 ended 10 items into the second page
        assert (job["checkpoint"], job["progress"]["page_skip"]) == (30, 10)

        env.new_attempt()
        env.enter()
        done = await arun_chunks(pages, write, chunk_size=20)

    assert asked == [None, 30]
    assert env.ids() == list(range(120))
    assert done.total == 120
    assert done.done
    assert env.job()["checkpoint"] == 120


@arun
async def test_a_stale_worker_commits_nothing_and_gets_lease_lost(database_url: str) -> None:
    async with async_env(database_url) as env:

        async def write(chunk: AsyncChunk[int]) -> None:
            if chunk.number == 3:
                env.steal()  # rescued and fetched by worker w2 while chunk 3 was written
            await copy_ids(chunk)

        with pytest.raises(LeaseLost, match="moved on"):
            await arun_chunks(list(range(500)), write, chunk_size=100)

    assert env.ids() == list(range(200))  # chunk 3's rows rolled back with its checkpoint
    job = env.job()
    assert (job["attempt"], job["worker_id"]) == (2, "w2")
    assert job["checkpoint"] == 200
    assert env.positions() == [100, 200]


@arun
async def test_an_expired_lease_stops_the_run_before_the_next_commit(database_url: str) -> None:
    async with async_env(database_url) as env:

        async def write(chunk: AsyncChunk[int]) -> None:
            if chunk.number == 2:
                env.sql(
                    "UPDATE unbroken.jobs SET lease_expires_at = now() - interval '1 second'"
                    " WHERE id = %s",
                    [env.job_id],
                )
            await copy_ids(chunk)

        with pytest.raises(LeaseLost, match="expired"):
            await arun_chunks(list(range(300)), write, chunk_size=100)
        assert env.ids() == list(range(100))

        with pytest.raises(LeaseLost, match="does not hold"):  # nor may a new run start
            await arun_chunks(list(range(300)), write, chunk_size=100)


@arun
async def test_cancel_stops_between_chunks(database_url: str) -> None:
    async with async_env(database_url) as env:

        async def write(chunk: AsyncChunk[int]) -> None:
            await copy_ids(chunk)
            if chunk.number == 2:
                current_job().cancel_requested = True  # as the heartbeat would set it

        with pytest.raises(JobCancelled):
            await arun_chunks(list(range(500)), write, chunk_size=100)
    assert env.ids() == list(range(200))  # chunk 2 finished and committed


@arun
async def test_chunk_size_set_at_run_time_applies_from_the_next_chunk(database_url: str) -> None:
    async with async_env(database_url) as env:
        sizes: list[int] = []

        async def write(chunk: AsyncChunk[int]) -> None:
            sizes.append(len(chunk.items))
            if chunk.number == 1:  # an operator changes the task's setting meanwhile
                env.sql("INSERT INTO unbroken.task_settings (task, chunk_size) VALUES ('etl', 25)")
            if chunk.number == 3:  # and then this one job's own size, which wins
                env.sql("UPDATE unbroken.jobs SET chunk_size = 7 WHERE id = %s", [env.job_id])
            await copy_ids(chunk)

        await arun_chunks(list(range(100)), write, chunk_size=10)

    assert sizes == [10, 25, 25, 7, 7, 7, 7, 7, 5]
    assert env.ids() == list(range(100))


@arun
async def test_no_connection_is_held_while_the_source_is_read(
    database_url: str, faults: Faults
) -> None:
    # min_size 0: the pool opens connections only when asked (with min_size 1 it may still
    # be opening its first one in the background), so any in use now would be the runner's
    async with async_env(database_url, pool_min_size=0) as env:
        assert env.adb is not None
        pool = env.adb.pool("chunks")
        observed: list[tuple[int, list[Any]]] = []

        async def slow_api() -> AsyncIterator[int]:
            for i in range(60):
                if i % 10 == 5:  # mid-chunk: what is the runner holding now?
                    busy = [s for s in faults.activity(env.app) if s["xact_start"] is not None]
                    observed.append((pool.stats().in_use, busy))
                yield i

        await arun_chunks(slow_api(), copy_ids, chunk_size=10)

    assert len(observed) == 6
    assert observed == [(0, [])] * 6  # no connection checked out, no transaction open
    assert env.ids() == list(range(60))


@arun
async def test_a_sync_source_in_an_async_task(database_url: str) -> None:
    def generate() -> Iterator[int]:
        yield from range(42)  # a blocking iterator: read in a thread, one chunk at a time

    async with async_env(database_url) as env:
        done = await arun_chunks(generate(), copy_ids, chunk_size=10, total=42)
    assert env.ids() == list(range(42))
    assert (done.total, done.chunks) == (42, 5)


@arun
async def test_bad_records_are_skipped_counted_and_sampled(database_url: str) -> None:
    def parse(raw: str) -> int:
        value = int(raw)
        if value % 7 == 0:
            raise ValueError(f"{value} is a multiple of 7")
        return value

    async with async_env(database_url) as env:
        done = await arun_chunks(
            [str(i) for i in range(1, 101)],
            copy_ids,
            validate=parse,
            chunk_size=30,
            bad_records=BadRecords(max_count=20, sample=3),
        )
        with psycopg.connect(database_url) as conn:
            stored = read_progress(conn, env.job_id)

    expected = [i for i in range(1, 101) if i % 7]
    assert env.ids() == expected
    assert (done.processed, done.failed, done.position) == (86, 14, 100)
    assert stored is not None
    assert (stored.processed, stored.failed) == (86, 14)
    assert stored.errors == [
        {"position": 6, "error": "ValueError: 7 is a multiple of 7"},
        {"position": 13, "error": "ValueError: 14 is a multiple of 7"},
        {"position": 20, "error": "ValueError: 21 is a multiple of 7"},
    ]


@arun
async def test_too_many_bad_records_fail_the_job_clearly(database_url: str) -> None:
    def parse(raw: int) -> int:
        if raw % 7 == 0:
            raise ValueError("multiple of 7")
        return raw

    async with async_env(database_url) as env:
        with pytest.raises(BadRecordsExceeded, match=r"8 of 60 items failed validation") as err:
            await arun_chunks(
                list(range(1, 101)),
                copy_ids,
                validate=parse,
                chunk_size=20,
                bad_records=BadRecords(max_count=5),
            )
        assert err.value.errors[0] == {"position": 6, "error": "ValueError: multiple of 7"}
        # the two full chunks before the limit was crossed are committed, the third is not
        assert env.ids() == [i for i in range(1, 41) if i % 7]

        env.new_attempt()
        env.enter()
        with pytest.raises(BadRecordsExceeded, match=r"more than BadRecords\(max_ratio=0.1\)"):
            await arun_chunks(
                list(range(1, 101)),
                copy_ids,
                validate=parse,
                chunk_size=20,
                bad_records=BadRecords(max_count=None, max_ratio=0.1, min_seen=50),
            )


@arun
async def test_progress_is_readable_by_job_id(database_url: str) -> None:
    async with async_env(database_url) as env:
        with psycopg.connect(database_url) as conn:
            assert read_progress(conn, env.job_id) is not None
            before = read_progress(conn, env.job_id)
            assert before is not None
            assert before.position == 0
            assert before.checkpoint_at is None
            await arun_chunks(list(range(30)), copy_ids, chunk_size=10)
            after = read_progress(conn, env.job_id)
            assert read_progress(conn, 999_999) is None

    assert after is not None
    assert (after.position, after.processed, after.total, after.chunks) == (30, 30, 30, 3)
    assert after.done
    assert after.fraction == 1.0
    assert after.eta_seconds == 0
    assert after.rate is not None
    assert after.rate > 0
    assert after.checkpoint == 30
    assert after.checkpoint_at is not None
    assert after.checkpoint_age is not None
    assert after.checkpoint_age >= 0
    assert after.state == "running"


@arun
async def test_a_job_with_two_runs_resumes_the_second_and_skips_the_first(
    database_url: str,
) -> None:
    """Seed 000's job: issues, then changelogs, in one task; it fails in the changelogs."""
    issues_read = 0

    def issues() -> Iterator[int]:
        nonlocal issues_read
        for i in range(250):
            issues_read += 1
            yield i

    async def write_issues(chunk: AsyncChunk[int]) -> None:
        await chunk.copy("keyed", ["id", "note"], [(i, "issue") for i in chunk.items])

    async with async_env(database_url) as env:

        async def write_changelogs(chunk: AsyncChunk[int]) -> None:
            if chunk.number == 3 and env.attempt == 1:
                raise Boom("the changelog API failed")
            await copy_ids(chunk)

        async def task() -> None:
            await arun_chunks(issues(), write_issues, chunk_size=100, name="issues")
            await arun_chunks(
                range(1000, 1450), write_changelogs, chunk_size=100, name="changelogs"
            )

        with pytest.raises(Boom):
            await task()
        assert issues_read == 250
        env.new_attempt()
        env.enter()
        await task()

        with psycopg.connect(database_url) as conn:
            progress = read_progress(conn, env.job_id)

    assert issues_read == 250  # the finished run was not read again
    assert env.ids("keyed") == list(range(250))
    assert env.ids() == list(range(1000, 1450))
    assert progress is not None
    assert (progress.run, progress.processed, progress.done) == ("changelogs", 450, True)
    assert progress.finished["issues"]["processed"] == 250
    assert progress.finished["changelogs"]["processed"] == 450


@arun
async def test_on_commit_hears_each_checkpoint_after_its_chunk_committed(
    database_url: str,
) -> None:
    """The hook runs once per chunk, after the commit: another session already sees the
    chunk's rows and checkpoint (what CDC needs before it advances its slot)."""
    async with async_env(database_url) as env:
        heard: list[tuple[Any, int, Any]] = []

        async def on_commit(checkpoint: Any) -> None:
            seen = env.sql("SELECT count(*) AS n FROM sink")[0]["n"]
            heard.append((checkpoint, seen, env.job()["checkpoint"]))

        await arun_chunks(list(range(25)), copy_ids, chunk_size=10, on_commit=on_commit)

    assert heard == [(10, 10, 10), (20, 20, 20), (25, 25, 25)]
