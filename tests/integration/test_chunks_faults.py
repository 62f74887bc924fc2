"""The chunk runner under real faults: the job survives, nothing is lost or written twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from chunks_support import CommitCutter, arun, async_env, sync_env
from pg import Faults, durable_commits
from unbroken import AsyncChunk, Chunk, CommitsLost, arun_chunks, run_chunks, telemetry
from unbroken.errors import UnitOfWorkFailed


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = telemetry.subscribe(lambda name, fields: seen.append((name, fields)))
    yield seen
    unsubscribe()


def retried(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [fields["error_type"] for name, fields in events if name == "chunk.retried"]


def assert_exactly_once(ids: list[int], count: int) -> None:
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert ids == list(range(count)), "a row is missing"


@arun
async def test_server_restart_mid_chunk_retries_the_chunk_without_failing_the_job(
    database_url: str, faults: Faults, events: list[tuple[str, dict[str, Any]]]
) -> None:
    async with async_env(database_url) as env:
        tries: dict[int, int] = {}

        async def write(chunk: AsyncChunk[int]) -> None:
            tries[chunk.number] = tries.get(chunk.number, 0) + 1
            await chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
            if chunk.number == 3 and tries[3] == 1:
                await asyncio.to_thread(faults.restart, "fast")  # rows sent, not committed

        done = await arun_chunks(list(range(1000)), write, chunk_size=100)

    assert tries[3] == 2  # the same chunk, again, on a fresh connection
    assert_exactly_once(env.ids(), 1000)
    assert done.done
    assert done.chunks == 10
    job = env.job()
    assert (job["state"], job["attempt"]) == ("running", 1)  # no attempt spent
    assert len(retried(events)) == 1  # AdminShutdown, or the socket closing under it
    positions = env.positions()
    assert positions == sorted(positions)


@arun
async def test_crash_restart_mid_chunk_is_survived_in_one_attempt(
    database_url: str, faults: Faults
) -> None:
    """flush_each_chunk: every commit is durable, so a crash only costs the chunk in flight."""
    durable_commits(database_url)
    async with async_env(database_url) as env:
        assert env.sql("SHOW synchronous_commit") == [{"synchronous_commit": "on"}]
        crashed = False

        async def write(chunk: AsyncChunk[int]) -> None:
            nonlocal crashed
            await chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
            if chunk.number == 2 and not crashed:
                crashed = True
                await asyncio.to_thread(faults.restart, "immediate")

        await arun_chunks(
            iter(range(500)), write, chunk_size=100, flush_each_chunk=True
        )  # a one-shot iterator: the run could not read it twice, and needs not

    assert crashed
    assert_exactly_once(env.ids(), 500)
    assert env.job()["progress"]["done"] is True


@arun
async def test_crash_with_chunks_not_waiting_for_their_flush_loses_nothing(
    database_url: str, faults: Faults
) -> None:
    """By default chunk commits do not wait for the WAL flush: a crash may undo the last
    ones, with their checkpoints; the run notices and reads them again from the source."""
    durable_commits(database_url)  # the server's own default; the runner turns it off per chunk
    async with async_env(database_url) as env:
        crashed = False

        async def write(chunk: AsyncChunk[int]) -> None:
            nonlocal crashed
            await chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
            if chunk.number == 4 and not crashed:
                crashed = True
                await asyncio.to_thread(faults.restart, "immediate")

        await arun_chunks(list(range(700)), write, chunk_size=100)

    assert crashed
    assert_exactly_once(env.ids(), 700)
    assert env.job()["progress"]["done"] is True


@arun
async def test_commits_lost_in_a_failover_are_redone_exactly(
    database_url: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """The job row and the sink go back two chunks, as after a failover to a replica that
    lagged: the run finds out at its next commit and redoes exactly what vanished."""
    async with async_env(database_url) as env:
        before: dict[str, Any] = {}
        rolled_back = [False]

        async def write(chunk: AsyncChunk[int]) -> None:
            if chunk.number == 2 and not before:
                before.update(env.job())  # as committed by chunk 1
            if chunk.number == 4 and not rolled_back[0]:
                rolled_back[0] = True
                env.sql(
                    "UPDATE unbroken.jobs SET progress = %s, checkpoint = %s WHERE id = %s",
                    [Jsonb(before["progress"]), Jsonb(before["checkpoint"]), env.job_id],
                )
                env.sql("DELETE FROM sink WHERE id >= 100")
            await chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])

        done = await arun_chunks(list(range(550)), write, chunk_size=100)

        assert_exactly_once(env.ids(), 550)
        assert done.processed == 550
        # 100 again: the failover (the log records every change of the job's progress)
        assert env.positions() == [100, 200, 300, 100, 200, 300, 400, 500, 550]

        env.sql("DELETE FROM sink")
        env.sql("UPDATE unbroken.jobs SET progress = NULL, checkpoint = NULL")
        env.new_attempt()
        env.enter()
        before.clear()
        rolled_back[0] = False
        with pytest.raises(CommitsLost, match="lost the last 2 chunk commit"):
            await arun_chunks(iter(range(550)), write, chunk_size=100)  # cannot be read again


@arun
async def test_terminated_backend_mid_chunk_is_retried(
    database_url: str, faults: Faults, events: list[tuple[str, dict[str, Any]]]
) -> None:
    async with async_env(database_url) as env:
        killed = 0

        async def write(chunk: AsyncChunk[int]) -> None:
            nonlocal killed
            await chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
            if chunk.number in (2, 5) and killed < chunk.number:
                killed = chunk.number
                assert await asyncio.to_thread(faults.terminate_backends, env.app) >= 1

        done = await arun_chunks(list(range(600)), write, chunk_size=100)

    assert_exactly_once(env.ids(), 600)
    assert done.position == 600
    assert len(retried(events)) == 2  # AdminShutdown, or the socket closing under it
    assert env.job()["attempt"] == 1


def test_server_down_for_a_while_mid_chunk_sync(
    database_url: str, faults: Faults, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """The sync runner waits out an outage with backoff (several failed tries in a row)."""
    with sync_env(database_url, pool_acquire_timeout=0.5) as env:
        down = False

        def write(chunk: Chunk[int]) -> None:
            nonlocal down
            chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
            if chunk.number == 2 and not down:
                down = True
                faults.stop_for_in_background(2.0)  # down now, back in 2 s

        done = run_chunks(list(range(400)), write, chunk_size=100, retries=30)

    assert_exactly_once(env.ids(), 400)
    assert done.done
    assert len(retried(events)) >= 2  # it kept trying while the server was away


def test_too_many_failures_in_a_row_fail_the_attempt_and_the_next_resumes(
    database_url: str, faults: Faults
) -> None:
    with sync_env(database_url) as env:
        kills = 0

        def write(chunk: Chunk[int]) -> None:
            nonlocal kills
            chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
            if chunk.number == 2 and env.attempt == 1:
                kills += 1
                faults.terminate_backends(env.app)  # every try of chunk 2 loses its session

        with pytest.raises(UnitOfWorkFailed, match="chunk 2 failed 3 times in a row") as err:
            run_chunks(list(range(300)), write, chunk_size=100, retries=3)
        assert err.value.attempts == kills == 3
        assert env.ids() == list(range(100))

        env.new_attempt()
        env.enter()
        run_chunks(list(range(300)), write, chunk_size=100)

    assert_exactly_once(env.ids(), 300)


@arun
async def test_a_commit_whose_answer_was_lost_is_not_written_again(
    database_url: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """COMMIT reaches the server, the connection dies before the client hears back: the
    retry must find the chunk committed instead of writing it a second time (the sink has
    no unique key, so a second write would show as duplicates)."""
    host_port = database_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    dbname = database_url.rsplit("/", 1)[1]
    with CommitCutter(host, int(port)) as cutter:
        async with async_env(cutter.url(dbname)) as env:

            async def write(chunk: AsyncChunk[int]) -> None:
                await chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
                if chunk.number == 2 and not cutter.cuts:
                    cutter.cut_next_commit()

            done = await arun_chunks(list(range(400)), write, chunk_size=100)

        assert cutter.cuts == 1
        assert len(retried(events)) == 1  # the lost answer was noticed and settled
        assert_exactly_once(env.ids(), 400)
        assert done.chunks == 4
        assert env.positions() == [100, 200, 300, 400, 400]  # the last: "done"
