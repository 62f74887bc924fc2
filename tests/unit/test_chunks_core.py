"""The chunk runner's logic (unbroken.chunks.state) without a database.

`drive` performs the run's effects the way the real runners do, answering its three queries
from a `FakeJob`: these tests are about the decisions (what is read, skipped, checkpointed,
retried, fenced); the SQL itself is exercised against PostgreSQL in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from unbroken import AsyncChunk, arun_chunks, run_chunks
from unbroken.chunks.compat import SourceReader
from unbroken.chunks.progress import Progress
from unbroken.chunks.state import (
    WRITE,
    BadRecords,
    BadRecordsExceeded,
    ChunkRun,
    CommitsLost,
    Committed,
    Execute,
    Fetch,
    Page,
    Read,
    Rewind,
    Sleep,
    Transact,
)
from unbroken.context import JobContext, reset_current_job, set_current_job
from unbroken.errors import JobCancelled, LeaseLost, UnbrokenError, UnitOfWorkFailed
from unbroken.settings import load_settings
from unbroken.sql import queries

Q = queries("unbroken")


def job(**changes: Any) -> JobContext:
    fields: dict[str, Any] = {
        "job_id": 7,
        "attempt": 1,
        "max_attempts": 5,
        "worker_id": "w1",
        "task": "etl",
        "queue": "default",
        "args": {},
        "checkpoint": None,
        "chunk_size": None,
        "rescues": 0,
        "claim": "2026-11-22 10:00:00+00",
        "settings": load_settings(retry_backoff_base=0.01, retry_backoff_cap=0.01),
        "schema": "unbroken",
    }
    return JobContext(**{**fields, **changes})


@dataclass
class FakeJob:
    """The job row as the three chunk queries see it."""

    checkpoint: Any = None
    progress: dict[str, Any] | None = None
    job_size: int | None = None
    task_size: int | None = None
    held: bool = True
    attempt: int = 1
    commits: list[dict[str, Any]] = field(default_factory=list)
    modes: list[str | None] = field(default_factory=list)  # commit_mode of each commit
    saved: list[tuple[Any, Any]] = field(default_factory=list)  # (checkpoint, progress) before

    def lose(self, commits: int) -> None:
        """What a crash or a failover does: the last `commits` commits never happened."""
        self.checkpoint, self.progress = self.saved[-commits]
        del self.saved[-commits:]

    @property
    def seq(self) -> int:
        return int((self.progress or {}).get("seq", 0))

    def answer(self, query: bytes, params: dict[str, Any]) -> tuple[Any, ...] | None:
        if query == Q["chunk_job_get"]:
            return (self.checkpoint, self.progress, self.job_size, self.task_size, self.held)
        if query == Q["chunk_job_state"]:
            return (self.attempt, "w1", "running", self.held, self.seq, True)
        assert query == Q["chunk_commit"]
        if not self.held or params["attempt"] != self.attempt or params["base"] != self.seq:
            return None
        self.saved.append((self.checkpoint, self.progress))
        self.modes.append(params["commit_mode"])
        cp = params["checkpoint"]
        self.checkpoint = None if cp is None else cp.obj
        self.progress = params["progress"].obj
        self.commits.append({"checkpoint": self.checkpoint, **params["progress"].obj})
        return (self.job_size, self.task_size)


@dataclass
class Driven:
    result: Progress
    chunks: list[list[Any]]  # the items each write call got
    sleeps: list[float]
    effects: list[str]
    committed: list[Any]  # the checkpoints the run reported committed (Committed effects)


def drive(
    run: ChunkRun[Any],
    source: Iterable[Any] | Callable[[Any], Iterable[Any]],
    fake: FakeJob,
    *,
    fail: Callable[[Transact, int], Exception | None] = lambda t, n: None,
    on_write: Callable[[list[Any]], None] = lambda items: None,
) -> Driven:
    """Perform the run's effects like the sync runner (`run_chunks`), against `fake`: the
    source is read by the runner's own `SourceReader`."""
    steps = run.steps()
    reader = SourceReader(source, run)
    chunks: list[list[Any]] = []
    sleeps: list[float] = []
    effects: list[str] = []
    committed: list[Any] = []
    tries = 0
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            effect = steps.send(result) if error is None else steps.throw(error)
        except StopIteration as stop:
            return Driven(stop.value, chunks, sleeps, effects, committed)
        effects.append(type(effect).__name__)
        result, error = None, None
        if isinstance(effect, Read):
            reader.fill()
        elif isinstance(effect, Fetch):
            result = fake.answer(effect.query, effect.params)
        elif isinstance(effect, Sleep):
            sleeps.append(effect.seconds)
        elif isinstance(effect, Committed):
            committed.append(effect.checkpoint)
        elif isinstance(effect, Rewind):  # reopens what can be reopened, else raises
            try:
                reader.rewind(effect.lost)
            except CommitsLost as lost:
                error = lost
        else:
            assert isinstance(effect, Transact)
            tries += 1
            error = fail(effect, tries)
            if error is not None:
                continue
            try:
                result = perform_tx(effect, fake, chunks, on_write)
            except Exception as exc:
                error = exc


def perform_tx(
    effect: Transact, fake: FakeJob, chunks: list[list[Any]], on_write: Callable[[list[Any]], None]
) -> Any:
    steps, sent = effect.steps, None
    while True:
        try:
            step = steps.send(sent)
        except StopIteration as stop:
            return stop.value
        if step == WRITE:
            chunks.append(list(effect.chunk.items))
            on_write(effect.chunk.items)
            sent = None
        else:
            assert isinstance(step, Execute)
            sent = fake.answer(step.query, step.params)


# --- checkpoints -------------------------------------------------------------------------------
def test_items_are_chunked_and_checkpointed_by_count() -> None:
    fake = FakeJob()
    out = drive(ChunkRun(job(), seekable=False, chunk_size=4), range(10), fake)
    assert out.chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c["checkpoint"] for c in fake.commits] == [4, 8, 10]
    assert out.committed == [4, 8, 10]  # on_commit hears of each commit, after it
    assert [c["done"] for c in fake.commits] == [False, False, True]
    assert out.result.done
    assert out.result.position == 10
    assert out.result.chunks == 3


def test_a_source_ending_on_a_chunk_boundary_gets_a_bare_done_commit() -> None:
    fake = FakeJob()
    out = drive(ChunkRun(job(), seekable=False, chunk_size=5), range(10), fake)
    assert out.chunks == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [(c["position"], c["done"], c["chunks"]) for c in fake.commits] == [
        (5, False, 1),
        (10, False, 2),
        (10, True, 2),  # not counted as a chunk, and write was not called
    ]


def test_a_cursor_function_checkpoints_the_last_item_consumed() -> None:
    fake = FakeJob()
    items = [{"id": 10 * i} for i in range(1, 8)]
    drive(ChunkRun(job(), seekable=False, chunk_size=3, cursor=lambda r: r["id"]), items, fake)
    assert [c["checkpoint"] for c in fake.commits] == [30, 60, 70]


def test_resume_skips_done_items_of_a_source_that_cannot_seek() -> None:
    fake = FakeJob(
        checkpoint=6, progress={"run": "main", "seq": 2, "position": 6, "processed": 6, "chunks": 2}
    )
    out = drive(ChunkRun(job(), seekable=False, chunk_size=3), range(10), fake)
    assert out.chunks == [[6, 7, 8], [9]]
    assert (out.result.processed, out.result.chunks) == (10, 4)


def test_resume_seeks_a_source_that_can() -> None:
    fake = FakeJob(checkpoint=60, progress={"run": "main", "seq": 2, "position": 6})
    asked: list[Any] = []

    def source(after: int | None) -> list[int]:
        asked.append(after)
        return [i for i in range(10, 100, 10) if after is None or i > after]

    run: ChunkRun[Any] = ChunkRun(job(), seekable=True, chunk_size=2, cursor=lambda i: i)
    out = drive(run, source, fake)
    assert asked == [60]
    assert out.chunks == [[70, 80], [90]]
    assert [c["position"] for c in fake.commits] == [8, 9]


def pages(cursor: int | None, size: int = 5, end: int = 12) -> Iterator[Page[int]]:
    for start in range(cursor or 0, end, size):
        yield Page(list(range(start, min(start + size, end))), start + size, total=end)


def test_a_checkpoint_inside_a_page_names_the_page_and_the_items_done() -> None:
    fake = FakeJob()
    out = drive(ChunkRun(job(), seekable=True, chunk_size=3), pages, fake)
    assert out.chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert [(c["checkpoint"], c["page_skip"]) for c in fake.commits] == [
        (None, 3),  # 3 items into the first page (fetched with cursor None)
        (5, 1),  # 1 item into the page fetched with cursor 5
        (5, 4),
        (15, 0),  # the last page is fully done
        (15, 0),  # the end of the source, found by the next read: "done"
    ]
    assert out.result.total == 12


def test_a_page_that_ends_the_chunk_commits_it_before_it_is_full() -> None:
    """A stream that caught up (CDC) commits what it has instead of waiting for more."""

    def stream(cursor: Any) -> Iterator[Page[int]]:
        yield Page([1, 2], cursor=2)
        yield Page([3], cursor=3, end_chunk=True)  # caught up: commit now
        yield Page([4, 5, 6, 7], cursor=7, end_chunk=True)  # fuller than a chunk
        yield Page([], cursor=8, end_chunk=True)  # nothing in the chunk: nothing to commit
        yield Page([9], cursor=9)

    fake = FakeJob()
    out = drive(ChunkRun(job(), seekable=True, chunk_size=3), stream, fake)
    assert out.chunks == [[1, 2, 3], [4, 5, 6], [7], [9]]
    assert [(c["checkpoint"], c["page_skip"]) for c in fake.commits] == [
        (3, 0),
        (3, 3),
        (7, 0),
        (9, 0),
    ]


def test_resume_inside_a_page_skips_only_that_pages_done_items() -> None:
    fake = FakeJob(checkpoint=5, progress={"run": "main", "seq": 2, "position": 6, "page_skip": 1})
    out = drive(ChunkRun(job(), seekable=True, chunk_size=4), pages, fake)
    assert out.chunks == [[6, 7, 8, 9], [10, 11]]


def test_a_paged_source_that_cannot_seek_is_skipped_by_count() -> None:
    fake = FakeJob(checkpoint=5, progress={"run": "main", "seq": 2, "position": 7, "page_skip": 2})
    out = drive(ChunkRun(job(), seekable=False, chunk_size=10), list(pages(None)), fake)
    assert out.chunks == [[7, 8, 9, 10, 11]]


def pages_ending_without_cursor(cursor: int | None, opened: list[Any]) -> Iterator[Page[int]]:
    """Pages of 4 of 0..11 fetched by page number; the last one has no next cursor."""
    opened.append(cursor)
    for number in range(cursor or 0, 3):
        yield Page(list(range(4 * number, 4 * number + 4)), number + 1 if number < 2 else None)


def test_a_chunk_ending_with_a_last_page_without_cursor_commits_done() -> None:
    """Issue 11: its checkpoint is None, which a resumed run would read as "start"; the
    run reads on to the source's end first, so that commit says done."""
    fake, opened = FakeJob(), list[Any]()
    out = drive(
        ChunkRun(job(), seekable=True, chunk_size=4),
        lambda c: pages_ending_without_cursor(c, opened),
        fake,
    )
    assert out.chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert [(c["checkpoint"], c["position"], c["done"]) for c in fake.commits] == [
        (1, 4, False),
        (2, 8, False),
        (None, 12, True),  # no bare "done" commit after it: nothing is left to resume
    ]

    again = drive(ChunkRun(job(attempt=2), seekable=True), lambda c: [], fake)
    assert (again.chunks, again.result.position, len(fake.commits)) == ([], 12, 3)


def test_a_page_after_one_without_cursor_waits_for_the_next_chunk() -> None:
    def source(cursor: int | None) -> Iterator[Page[int]]:
        yield Page([0, 1], None)  # an API that gives no cursor, yet goes on
        yield Page([2, 3], None)
        yield Page([4], 5)

    fake = FakeJob()
    out = drive(ChunkRun(job(), seekable=True, chunk_size=2), source, fake)
    assert out.chunks == [[0, 1], [2, 3], [4]]
    assert [(c["checkpoint"], c["position"], c["done"]) for c in fake.commits] == [
        (None, 2, False),  # None: the source's start, 2 items into it
        (None, 4, False),
        (5, 5, True),
    ]


@pytest.mark.parametrize("paged", [True, False])
def test_resume_at_checkpoint_none_skips_everything_done_from_the_start(paged: bool) -> None:
    """A checkpoint None with items done (rows written before issue 11's fix, a cursor that
    was None): called with None the source starts over, so `position` items are skipped."""
    fake = FakeJob(progress={"run": "main", "seq": 3, "position": 12, "done": False})
    opened: list[Any] = []
    if paged:
        out = drive(
            ChunkRun(job(), seekable=True),
            lambda c: pages_ending_without_cursor(c, opened),
            fake,
        )
    else:

        def items(cursor: Any) -> range:
            opened.append(cursor)
            return range(12)

        out = drive(ChunkRun(job(), seekable=True, cursor=lambda i: None), items, fake)
    assert opened == [None]
    assert out.chunks == []  # read again, written never
    assert [(c["position"], c["done"]) for c in fake.commits] == [(12, True)]


def test_the_total_shown_is_never_below_the_position_and_exact_once_done() -> None:
    def source(cursor: int | None) -> Iterator[Page[int]]:
        yield Page([0, 1, 2], 1, total=3)
        yield Page([3, 4, 5], 2, total=2)  # a later page says less than was already read
        yield Page([6, 7], 3, total=9)

    fake = FakeJob()
    out = drive(ChunkRun(job(), seekable=True, chunk_size=2), source, fake)
    assert [(c["position"], c["total"]) for c in fake.commits] == [
        (2, 3),
        (4, 4),  # the page said 2: raised to what was consumed
        (6, 6),
        (8, 9),
        (8, 8),  # done: the total is what the source held
    ]
    assert out.result.total == 8
    told = drive(ChunkRun(job(), seekable=False, chunk_size=4, total=10), range(6), FakeJob())
    assert (told.result.position, told.result.total) == (6, 6)


def test_items_and_pages_do_not_mix() -> None:
    with pytest.raises(TypeError, match="either items or Pages"):
        drive(ChunkRun(job(), seekable=False, chunk_size=3), [1, Page([2], 1)], FakeJob())
    with pytest.raises(TypeError, match="not a Page"):
        drive(ChunkRun(job(), seekable=False, chunk_size=3), [Page([2], 1), 1], FakeJob())
    run: ChunkRun[Any] = ChunkRun(job(), seekable=True, cursor=lambda x: x)
    with pytest.raises(TypeError, match="cursor= applies to item sources"):
        drive(run, pages, FakeJob())


def test_a_finished_run_resumed_commits_nothing() -> None:
    fake = FakeJob(checkpoint=3, progress={"run": "main", "seq": 2, "position": 3, "done": True})
    out = drive(ChunkRun(job(), seekable=False, chunk_size=3), range(3), fake)
    assert out.chunks == []
    assert fake.commits == []
    assert out.result.done


# --- sizes and progress ------------------------------------------------------------------------
def test_chunk_size_most_specific_wins_and_is_reread_at_each_commit() -> None:
    fake = FakeJob(task_size=3)
    seen: list[int] = []

    def on_write(items: list[Any]) -> None:
        seen.append(len(items))
        if len(seen) == 2:
            fake.job_size = 2  # this job's own size, set while it runs
        if len(seen) == 4:
            fake.job_size = None  # cleared: back to the task's setting

    drive(ChunkRun(job(), seekable=False, chunk_size=50), range(14), fake, on_write=on_write)
    assert seen == [3, 3, 2, 2, 3, 1]
    declared = job(task_chunk_size=4)  # @app.task(chunk_size=4), via the executor
    assert drive(ChunkRun(declared, seekable=False), range(6), FakeJob()).chunks == [
        [0, 1, 2, 3],
        [4, 5],
    ]
    passed: ChunkRun[Any] = ChunkRun(job(task_chunk_size=4), seekable=False, chunk_size=5)
    assert len(drive(passed, range(6), FakeJob()).chunks[0]) == 5
    assert len(drive(ChunkRun(job(), seekable=False), range(1500), FakeJob()).chunks[0]) == 1000


def test_a_closed_pool_is_a_set_up_error_not_an_outage() -> None:
    from psycopg_pool import PoolClosed

    with pytest.raises(PoolClosed):
        drive(
            ChunkRun(job(), seekable=False),
            range(3),
            FakeJob(),
            fail=lambda t, n: PoolClosed("the pool 'chunks' is not open yet"),
        )


def test_rate_and_eta_come_from_the_clock() -> None:
    now = [100.0]

    def clock() -> float:
        now[0] += 1.0  # one second per reading
        return now[0]

    fake = FakeJob()
    run: ChunkRun[Any] = ChunkRun(job(), seekable=False, chunk_size=10, total=40, clock=clock)
    drive(run, range(40), fake)
    first = fake.commits[0]
    assert first["rate"] > 0
    assert first["eta_seconds"] == pytest.approx(30 / first["rate"], rel=1e-3)
    assert fake.commits[-1]["eta_seconds"] == 0.0


def test_cancel_or_lost_lease_seen_by_the_heartbeat_stops_before_the_next_chunk() -> None:
    ctx = job()
    ctx.cancel_requested = True
    with pytest.raises(JobCancelled):
        drive(ChunkRun(ctx, seekable=False), range(5), FakeJob())
    with pytest.raises(LeaseLost, match="does not hold"):
        drive(ChunkRun(job(), seekable=False), range(5), FakeJob(held=False))


# --- bad records -------------------------------------------------------------------------------
def odd_only(x: int) -> int:
    if x % 2 == 0:
        raise ValueError(f"{x} is even")
    return x


def test_bad_records_within_the_limit_are_skipped_counted_and_sampled() -> None:
    fake = FakeJob()
    bad = BadRecords(max_count=None, sample=2)
    out = drive(
        ChunkRun(job(), seekable=False, chunk_size=4, validate=odd_only, bad=bad), range(10), fake
    )
    assert out.chunks == [[1, 3], [5, 7], [9]]
    assert (out.result.processed, out.result.failed, out.result.position) == (5, 5, 10)
    assert fake.commits[-1]["errors"] == [
        {"position": 0, "error": "ValueError: 0 is even"},
        {"position": 2, "error": "ValueError: 2 is even"},
    ]


def test_by_default_one_bad_record_fails_the_job() -> None:
    with pytest.raises(BadRecordsExceeded, match=r"1 of 3 items.*item 1: ValueError: 2 is even"):
        drive(
            ChunkRun(job(), seekable=False, validate=odd_only, chunk_size=4), [1, 2, 3], FakeJob()
        )


def test_the_ratio_limit_waits_for_enough_items() -> None:
    bad = BadRecords(max_count=None, max_ratio=0.3, min_seen=6)
    run: ChunkRun[Any] = ChunkRun(job(), seekable=False, validate=odd_only, bad=bad, chunk_size=2)
    with pytest.raises(BadRecordsExceeded) as err:
        drive(run, [2, 1, 1, 1, 1, 1, 2, 2, 1, 1], FakeJob())  # 1 bad in 2 is not judged yet
    assert (err.value.failed, err.value.seen) == (3, 8)
    assert isinstance(err.value, UnbrokenError)


def test_bad_records_settings_are_checked() -> None:
    for wrong in ({"max_count": -1}, {"max_ratio": 1.5}, {"min_seen": 0}):
        with pytest.raises(ValueError, match="BadRecords"):
            BadRecords(**wrong)
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkRun(job(), seekable=False, chunk_size=0)


# --- retries and fencing -----------------------------------------------------------------------
def lost_connection() -> Exception:
    return psycopg.OperationalError("server closed the connection unexpectedly")


def test_a_transient_error_retries_the_same_chunk_after_a_backoff() -> None:
    fake = FakeJob()
    out = drive(
        ChunkRun(job(), seekable=False, chunk_size=5),
        range(8),
        fake,
        fail=lambda t, n: lost_connection() if n in (2, 3) else None,
    )
    assert out.chunks == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert len(out.sleeps) == 2
    assert [c["position"] for c in fake.commits] == [5, 8]


def test_a_commit_that_went_through_before_its_answer_was_lost_is_not_written_again() -> None:
    fake = FakeJob()

    def commit_then_lose(t: Transact, n: int) -> Exception | None:
        if n == 2:  # commit chunk 2 for real, then report the connection lost
            perform_tx(t, fake, [], lambda items: None)
            return lost_connection()
        return None

    run: ChunkRun[Any] = ChunkRun(job(), seekable=False, chunk_size=5)
    out = drive(run, range(13), fake, fail=commit_then_lose)
    assert out.chunks == [[0, 1, 2, 3, 4], [10, 11, 12]]  # chunk 2 was written once only
    assert [c["position"] for c in fake.commits] == [5, 10, 13]
    assert out.committed == [5, 10, 13]  # the settled commit is reported once
    assert out.result.position == 13


def test_permanent_errors_are_not_retried() -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        drive(
            ChunkRun(job(), seekable=False, chunk_size=5),
            range(10),
            FakeJob(),
            fail=lambda t, n: psycopg.errors.UniqueViolation("duplicate key"),
        )


def test_too_many_failures_in_a_row_give_up_with_the_count() -> None:
    with pytest.raises(UnitOfWorkFailed, match="chunk 1 failed 3 times in a row") as err:
        drive(
            ChunkRun(job(), seekable=False, chunk_size=5, retries=3),
            range(10),
            FakeJob(),
            fail=lambda t, n: lost_connection(),
        )
    assert err.value.attempts == 3
    assert isinstance(err.value.__cause__, psycopg.OperationalError)


def test_failures_are_counted_per_chunk_not_per_run() -> None:
    out = drive(
        ChunkRun(job(), seekable=False, chunk_size=1, retries=2),
        range(4),
        FakeJob(),
        fail=lambda t, n: lost_connection() if n % 2 else None,  # every chunk fails once
    )
    assert len(out.chunks) == 4
    assert len(out.sleeps) == 5  # 4 chunks and the bare "done" commit each failed once


def test_a_fenced_commit_raises_lease_lost_and_is_not_retried() -> None:
    fake = FakeJob()

    def rescued(items: list[Any]) -> None:
        if items[0] == 5:
            fake.attempt = 2  # the job was rescued and fetched again meanwhile

    with pytest.raises(LeaseLost, match="chunk 2 rolled back: the job moved on"):
        drive(ChunkRun(job(), seekable=False, chunk_size=5), range(15), fake, on_write=rescued)
    assert [c["position"] for c in fake.commits] == [5]


def test_an_expired_lease_or_a_moved_position_refuses_the_commit() -> None:
    fake = FakeJob()

    def expire(items: list[Any]) -> None:
        fake.held = False

    with pytest.raises(LeaseLost, match="lease expired"):
        drive(ChunkRun(job(), seekable=False, chunk_size=5), range(10), fake, on_write=expire)

    fake = FakeJob()

    def interfere(items: list[Any]) -> None:
        fake.progress = {"seq": 99}  # someone else committed meanwhile

    with pytest.raises(UnbrokenError, match="99 chunks of it were committed, not 0"):
        drive(ChunkRun(job(), seekable=False, chunk_size=5), range(10), fake, on_write=interfere)


# --- several runs in one job -------------------------------------------------------------------
def test_runs_of_one_job_checkpoint_separately_and_finished_ones_are_skipped() -> None:
    fake = FakeJob()
    ctx = job()
    first = drive(ChunkRun(ctx, seekable=False, chunk_size=4, name="issues"), range(6), fake)
    assert fake.checkpoint == 6
    boom = RuntimeError("the changelog API is down")

    def fail_third(items: list[Any]) -> None:
        if items[0] == 108:
            raise boom

    with pytest.raises(RuntimeError):  # the second run starts at 0, not at the issues' 6
        drive(
            ChunkRun(ctx, seekable=False, chunk_size=4, name="changelogs"),
            range(100, 110),
            fake,
            on_write=fail_third,
        )
    assert fake.checkpoint == 8
    assert fake.progress is not None
    assert fake.progress["finished"]["issues"]["processed"] == 6

    retry = job(attempt=1)  # the next attempt: the task runs both again

    def unreadable(cursor: Any) -> Iterator[int]:
        raise AssertionError("a finished run must not read its source again")

    again = drive(ChunkRun(retry, seekable=True, name="issues"), unreadable, fake)
    assert again.result.done
    assert again.result.processed == first.result.processed == 6
    assert again.chunks == []
    rest = drive(
        ChunkRun(retry, seekable=False, chunk_size=4, name="changelogs"), range(100, 110), fake
    )
    assert rest.chunks == [[108, 109]]
    assert sorted(fake.progress["finished"]) == ["changelogs", "issues"]
    assert [c["seq"] for c in fake.commits] == [1, 2, 3, 4, 5]


def test_one_name_runs_once_per_attempt_and_runs_do_not_overlap() -> None:
    fake = FakeJob()
    ctx = job()
    drive(ChunkRun(ctx, seekable=False, chunk_size=4), range(3), fake)
    with pytest.raises(UnbrokenError, match="already ran chunks named 'main'"):
        drive(ChunkRun(ctx, seekable=False, chunk_size=4), range(3), fake)

    fake = FakeJob(progress={"run": "issues", "seq": 1, "position": 4, "done": False})
    with pytest.raises(UnbrokenError, match="in the middle of chunked run 'issues'"):
        drive(ChunkRun(job(), seekable=False, name="changelogs"), range(3), fake)


def test_chunks_commit_without_waiting_for_the_flush_but_the_last_one_waits() -> None:
    fake = FakeJob()
    drive(ChunkRun(job(), seekable=False, chunk_size=5), range(12), fake)
    assert fake.modes == ["off", "off", None]
    fake = FakeJob()
    drive(ChunkRun(job(), seekable=False, chunk_size=5, flush_each_chunk=True), range(12), fake)
    assert fake.modes == [None, None, None]


def test_commits_lost_by_the_database_are_redone_from_the_surviving_checkpoint() -> None:
    asked: list[Any] = []

    def source(after: int | None) -> range:
        asked.append(after)
        return range(after or 0, 23)

    for seekable, src in ((True, source), (False, range(23))):
        fake = FakeJob()
        lost = [False]

        def crash(items: list[Any], fake: FakeJob = fake, lost: list[bool] = lost) -> None:
            if items[0] == 15 and not lost[0]:
                lost[0] = True
                fake.lose(2)  # chunks 2 and 3 vanished, each with its checkpoint

        run: ChunkRun[Any] = ChunkRun(job(), seekable=seekable, chunk_size=5)
        out = drive(run, src, fake, on_write=crash)
        written = [i for chunk in out.chunks for i in chunk]
        # chunk 4 (15..19) was written, then rolled back when its commit found 2 and 3 gone
        assert written == [*range(20), *range(5, 23)]
        assert [c["position"] for c in fake.commits] == [5, 10, 15, 10, 15, 20, 23]
        assert out.result.position == 23
        assert out.result.processed == 23  # counted once: the lost commits' counts went too
    assert asked == [None, 5]


def test_a_one_shot_source_cannot_be_read_again_so_the_attempt_ends() -> None:
    fake = FakeJob()

    def crash(items: list[Any]) -> None:
        if items[0] == 10:
            fake.lose(1)

    with pytest.raises(CommitsLost, match="lost the last 1 chunk commit"):
        drive(ChunkRun(job(), seekable=False, chunk_size=5), iter(range(20)), fake, on_write=crash)


def test_a_database_that_keeps_losing_commits_ends_the_run() -> None:
    fake = FakeJob()

    def crash(items: list[Any]) -> None:
        if items[0] == 5:
            fake.lose(1)  # every time

    with pytest.raises(CommitsLost):
        drive(ChunkRun(job(), seekable=False, chunk_size=5), range(20), fake, on_write=crash)
    assert len(fake.commits) == 4  # chunk 1, then again after each of the 3 rewinds allowed


# --- the runners' entry: the right form in the right place ------------------------------------
def test_run_chunks_on_a_thread_running_an_event_loop_says_to_await_arun_chunks() -> None:
    """A sync run on the loop's thread would block every other job on the loop: it is
    refused at once, in one line, before it touches the job or the database."""

    async def task() -> None:
        run_chunks(range(3), lambda chunk: None)

    with pytest.raises(UnbrokenError, match=r"use `await arun_chunks\(\.\.\.\)`") as refused:
        asyncio.run(task())
    assert "\n" not in str(refused.value)


def test_each_runner_names_the_other_in_a_task_of_the_other_kind() -> None:
    token = set_current_job(job())  # neither pool: the task is of the other kind for both
    try:
        with pytest.raises(UnbrokenError, match=r"needs an async task; use run_chunks\(\)"):
            asyncio.run(arun_chunks(range(3), _awrite))
        with pytest.raises(UnbrokenError, match=r"needs a sync task; use `await arun_chunks"):
            run_chunks(range(3), lambda chunk: None)
    finally:
        reset_current_job(token)


async def _awrite(chunk: AsyncChunk[int]) -> None:
    pass
