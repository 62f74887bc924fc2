"""Property (issue 11): whatever the source's shape and wherever a run is killed, the sink
ends up holding the source exactly once, and no committed position exceeds its total.

Hypothesis draws a source (pages of 0..4 items, or items; seekable or not; page cursors
that may be None, the last one especially; totals exact, stale-low, high or unknown), a
chunk size, and the points at which the run dies: an "event" is every pull from the source
(each page or item, and the pull that finds its end) and every chunk write (after its rows
are sent, before its commit). A death raises out of the source or the sink, abandoning
the run between commits, and the next attempt resumes in a new run, as a retried job does.
Each example then runs one more attempt, as after a worker killed once its run returned:
it must neither read the source nor write. The runner and the database are real (the
sync runner on a test database); the SIGKILL of a real worker process is covered by
test_chunks_workers.py::test_killed_after_a_last_page_without_cursor_*.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunks_support import ChunkEnv, sync_env
from unbroken import Chunk, Page, run_chunks

TOTALS = ("none", "exact", "less", "more")


class Crash(Exception):
    """The run dies here (the worker was killed): nothing after this point happens."""


@dataclass(frozen=True)
class Shape:
    paged: bool
    seekable: bool
    sizes: tuple[int, ...]  # items on each page (an item source yields them one by one)
    no_cursor: tuple[bool, ...]  # the page's next cursor is None (items: its last item's)
    totals: tuple[str, ...]  # what each page says of the source's size (items: the first)
    chunk_size: int
    item_cursor: bool  # a seekable item source checkpoints cursor(item), not a count
    kills: frozenset[int]  # the events at which the run dies

    @property
    def count(self) -> int:
        return sum(self.sizes)

    def starts(self) -> list[int]:
        return [sum(self.sizes[:k]) for k in range(len(self.sizes))]

    def total(self, k: int) -> int | None:
        said = self.totals[k] if k < len(self.totals) else "none"
        n = self.count
        return {"none": None, "exact": n, "less": max(0, n - 2), "more": n + 3}[said]


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    sizes = draw(st.lists(st.integers(0, 4), max_size=6))
    no_cursor = [draw(st.sampled_from((False, False, False, True))) for _ in sizes]
    last_has_none: bool = draw(st.booleans())
    if sizes and last_has_none:
        no_cursor[-1] = True  # the API ends its pages with no next cursor
    return Shape(
        paged=draw(st.booleans()),
        seekable=draw(st.booleans()),
        sizes=tuple(sizes),
        no_cursor=tuple(no_cursor),
        totals=tuple(draw(st.sampled_from(TOTALS)) for _ in sizes),
        chunk_size=draw(st.integers(1, 5)),
        item_cursor=draw(st.booleans()),
        kills=frozenset(draw(st.sets(st.integers(1, 40), max_size=3))),
    )


class Source:
    """The drawn source, counting events and dying at the drawn ones."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.events = 0
        self.opened = 0
        starts = shape.starts()
        self.pages = [list(range(s, s + n)) for s, n in zip(starts, shape.sizes, strict=True)]
        # items whose cursor (an item source's checkpoint after them) is None
        self.no_cursor = {
            p[-1] for p, none in zip(self.pages, shape.no_cursor, strict=True) if p and none
        }

    def event(self) -> None:
        self.events += 1
        if self.events in self.shape.kills:
            raise Crash(f"killed at event {self.events}")

    def read_pages(self, cursor: Any) -> Iterator[Page[int]]:
        """Pages from the one `cursor` names (None: the first); page k's next cursor is
        k + 1, or None where the shape says so."""
        self.opened += 1
        for k in range(0 if cursor is None else int(cursor), len(self.pages)):
            self.event()
            after = None if self.shape.no_cursor[k] else k + 1
            yield Page(self.pages[k], after, total=self.shape.total(k))
        self.event()  # the pull that finds the end

    def read_items(self, cursor: Any) -> Iterator[int]:
        """Items from the position `cursor` names (None: the first)."""
        self.opened += 1
        for item in range(0 if cursor is None else int(cursor), self.shape.count):
            self.event()
            yield item
        self.event()

    def cursor(self, item: int) -> int | None:
        return None if item in self.no_cursor else item + 1

    def __iter__(self) -> Iterator[Any]:  # a source that cannot seek, read from its start
        return self.read_pages(None) if self.shape.paged else self.read_items(None)

    def run(self, write: Callable[[Chunk[int]], None]) -> Any:
        s = self.shape
        source: Any = self
        options: dict[str, Any] = {"chunk_size": s.chunk_size}
        if s.seekable:
            source = self.read_pages if s.paged else self.read_items
        if not s.paged:
            options["total"] = s.total(0)
            if s.seekable and s.item_cursor:
                options["cursor"] = self.cursor
        return run_chunks(source, write, **options)


def check_progress(env: ChunkEnv) -> None:
    p = env.job()["progress"] or {}
    if p.get("total") is not None:
        assert p["position"] <= p["total"], p


def run_until_done(env: ChunkEnv, shape: Shape) -> None:
    source = Source(shape)

    def write(chunk: Chunk[int]) -> None:
        chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])
        source.event()  # dies with the chunk's rows sent, before its commit

    for _ in range(len(shape.kills) + 1):
        try:
            done = source.run(write)
            break
        except Crash:
            check_progress(env)
            env.new_attempt()  # the job is retried: a new attempt resumes the run
            env.leave()
            env.enter()
    else:
        raise AssertionError("the run did not finish after every planned death")

    assert env.ids() == list(range(shape.count)), "the sink is not the source, exactly once"
    assert (done.position, done.done) == (shape.count, True)
    check_progress(env)
    positions = env.positions()
    assert positions == sorted(positions), positions

    # Killed after the run returned: the next attempt finds it finished.
    events, opened, commits = source.events, source.opened, len(positions)
    env.new_attempt()
    env.leave()
    env.enter()
    again = source.run(write)
    assert (source.events, source.opened) == (events, opened), "a finished run read again"
    assert len(env.positions()) == commits, "a finished run committed again"
    assert (again.position, again.done) == (shape.count, True)


def test_any_source_shape_killed_anywhere_is_written_exactly_once(database_url: str) -> None:
    with sync_env(database_url) as env:

        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(shapes())
        def check(shape: Shape) -> None:
            env.leave()
            env.new_job()
            env.enter()
            run_until_done(env, shape)

        check()
