"""One chunked run's logic, with no I/O: the async and the sync runner share all of it.

`ChunkRun.steps()` is a generator holding the whole algorithm (resume, read, commit, retry,
fence). It yields *effects* and the runner (`arun_chunks` in `_async/runner.py`, or the
`run_chunks` generated from it) only performs them and sends the result back, or throws the
error in:

    Fetch(query, params)  one statement on a pool connection, autocommit; -> first row
    Read()                fill the chunk from the source (run.want / run.add / run.exhausted)
    Transact(chunk, ...)  run `steps` inside one transaction: Execute(query) -> first row,
                          WRITE -> call the task's write function with the chunk
    Sleep(seconds)        back off before trying again
    Rewind(lost)          the database lost commits: read the source again, if it can be
    Committed(checkpoint) a chunk committed: call the run's `on_commit` hook, if any

So the decisions are written once, and the two runners differ only by `await` (and by how
they read the source: `unbroken.chunks.compat`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar

from psycopg.types.json import Jsonb
from psycopg_pool import PoolClosed

from unbroken import telemetry
from unbroken.chunks.progress import Progress
from unbroken.db.backoff import Backoff, BackoffPolicy
from unbroken.db.classify import is_transient
from unbroken.db.conninfo import redact
from unbroken.errors import (
    BadRecordsExceeded,
    CommitsLost,
    LeaseLost,
    UnbrokenError,
    UnitOfWorkFailed,
)
from unbroken.sql import queries

if TYPE_CHECKING:
    from unbroken.context import JobContext

T = TypeVar("T")
logger = logging.getLogger("unbroken.chunks")

DEFAULT_CHUNK_SIZE: Final = 1000
_MAX_REWINDS: Final = 3  # times one run reads its source again after commits were lost
_SKIP_BATCH: Final = 10_000  # items read per round while skipping already-done ones
_ERROR_TEXT: Final = 300  # characters of one bad record's error kept in the sample


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page from a paginated source, with the cursor that fetches the page after it.

    A source yields either items or pages. With pages, the checkpoint is a page cursor: a
    resumed run calls the source with it and skips the items of that page already done.
    A cursor of None (an API's last page) cannot fetch anything after the page: a chunk
    that ends with such a page is committed only once the source was read on (usually to
    its end, so the commit says done), and a run resumed at checkpoint None calls the
    source with None, its start, and skips every item already done.
    """

    items: Sequence[T]
    cursor: Any  # JSON: give it back to the source to get the pages after this one
    total: int | None = None  # items in the whole source, when the API tells (latest wins)
    # Commit the chunk once this page is in it, full or not: a stream that caught up says
    # so, rather than hold what it read until more comes (CDC; unbroken.cdc)
    end_chunk: bool = False


@dataclass(frozen=True)
class BadRecords:
    """How many items may fail `validate` (and be skipped) before the job fails.

    The default allows none: an item that fails validation fails the job with its position
    and error. Set `max_count` and/or `max_ratio` to skip and count bad items instead.
    """

    max_count: int | None = 0  # more failed items than this fails the job (None: no limit)
    max_ratio: float | None = None  # failed / seen above this fails the job...
    min_seen: int = 100  # ...once at least this many items were seen (one bad in 3 is noise)
    sample: int = 20  # errors kept in the job's progress for someone to look at

    def __post_init__(self) -> None:
        if self.max_count is not None and self.max_count < 0:
            raise ValueError("BadRecords.max_count must be >= 0 or None")
        if self.max_ratio is not None and not 0 <= self.max_ratio <= 1:
            raise ValueError("BadRecords.max_ratio must be between 0 and 1, or None")
        if self.min_seen < 1 or self.sample < 0:
            raise ValueError("BadRecords.min_seen must be >= 1 and sample >= 0")


# --- effects (runner <- run) and steps inside a chunk's transaction ------------------------
@dataclass(frozen=True)
class Fetch:
    query: bytes
    params: dict[str, Any]


@dataclass(frozen=True)
class Read:
    pass


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Rewind:
    """The database lost commits: close the source; the next Read opens it again."""

    lost: CommitsLost


@dataclass(frozen=True)
class Committed:
    """A chunk and its checkpoint are committed: the runner calls `on_commit(checkpoint)`."""

    checkpoint: Any


@dataclass(frozen=True)
class Execute:
    query: bytes
    params: dict[str, Any]


WRITE: Final = "write"
TxStep = Execute | Literal["write"]
TxSteps = Generator[TxStep, Any, "tuple[Any, ...] | None"]


@dataclass(frozen=True)
class PendingChunk(Generic[T]):
    """A chunk read from the source and ready to commit (again, if a try failed)."""

    number: int  # 1-based, counted over this run
    items: list[T]  # the valid items, for the write function
    seq: int  # the job's commit count once this chunk is committed (the fence expects seq - 1)
    base: int  # position (items consumed) before this chunk
    checkpoint: Any
    failed: int  # items of this chunk that failed validation
    done: bool  # the source ended: this commit finishes the run
    progress: dict[str, Any]  # jobs.progress once committed


@dataclass(frozen=True)
class Transact:
    chunk: PendingChunk[Any]
    steps: TxSteps


Effect = Fetch | Read | Transact | Sleep | Rewind | Committed
_SETTLED: Final = ()  # a retried commit found its earlier try had committed
_FINISHED_KEYS: Final = ("position", "processed", "failed", "total", "chunks", "errors", "done")


def _retryable(exc: Exception) -> bool:
    # A closed pool is a set-up mistake (the worker opens "chunks"), not a passing outage.
    return is_transient(exc) and not isinstance(exc, PoolClosed)


@dataclass
class ChunkRun(Generic[T]):
    """Where one chunked run stands, and what it does next (see the module docstring)."""

    job: JobContext
    seekable: bool  # the source is a function of the checkpoint
    name: str = "main"  # tells apart the chunked runs of one job (phases: issues, changelogs)
    chunk_size: int | None = None  # the task's default
    cursor: Callable[[Any], Any] | None = None  # checkpoint after an item (item sources)
    validate: Callable[[Any], T] | None = None
    total: int | None = None
    bad: BadRecords = field(default_factory=BadRecords)
    retries: int = 10  # consecutive failed tries of one chunk before the attempt fails
    flush_each_chunk: bool = False  # every commit waits for its WAL flush, not just the last
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.retries < 1:
            raise ValueError(f"retries must be >= 1, got {self.retries}")
        self.queries = queries(self.job.schema)
        # committed state (from the job row, then from each commit)
        self.position = self.processed = self.failed = self.chunks = 0
        self.seq = 0  # commits of chunks in this job, over all its runs: what the fence checks
        self.finished: dict[str, dict[str, Any]] = {}  # this job's earlier runs, by name
        self.checkpoint: Any = None
        self.done = False
        self.errors: list[dict[str, Any]] = []
        self.size = DEFAULT_CHUNK_SIZE  # until the job row is read
        self.seek: Any = None  # what a seekable source is called with
        # reading state
        self._skip = 0  # items still to drop: done by an earlier attempt
        self._mode: Literal["items", "pages"] | None = None
        self._exhausted = False
        self._last_raw: Any = None
        self._has_last = False
        self._page: list[Any] = []  # the current page's items
        self._page_taken = 0  # of which consumed (written, failed or skipped)
        self._page_end_chunk = False  # the current page ends a chunk (Page.end_chunk)
        self._end_chunk = False  # ...and it is all in the chunk being filled
        self._page_before: Any = None  # cursor that fetches the current page
        self._page_after: Any = None  # cursor that fetches the page after it
        self._started = self.clock()
        self._start_position = 0
        self._new_chunk()

    # --- the algorithm -------------------------------------------------------------------------
    def steps(self) -> Generator[Effect, Any, Progress]:
        """The whole run, as effects for a runner to perform."""
        rewinds = 0
        while True:
            row = yield from self._retrying(
                "reading the job", lambda: Fetch(self.queries["chunk_job_get"], self._ids())
            )
            self._resume(row)
            if not rewinds:
                self._claim_name()
            if self.done and self.name in self.finished:
                return self.progress()  # finished by an earlier attempt: not read again
            try:
                yield from self._chunks()
            except CommitsLost as lost:
                rewinds += 1
                if rewinds > _MAX_REWINDS:  # a database that keeps losing commits: stop
                    raise
                logger.warning("%s; reading the source again from there", lost)
                yield Rewind(lost)  # raises `lost` if the source cannot be read again
                continue
            return self.progress()

    def _chunks(self) -> Generator[Effect, Any, None]:
        while True:
            self.job.check()  # lease lost or cancel requested (heartbeat): stop between chunks
            if self.want():
                yield Read()
            pending = self._take()
            if pending is None:
                return
            yield from self._commit(pending)
            yield Committed(pending.checkpoint)
            if pending.done:
                return

    def _commit(self, pending: PendingChunk[T]) -> Generator[Effect, Any, None]:
        backoff = self._backoff()
        while True:
            self.job.check()  # the heartbeat may have found the lease gone while we waited
            started = self.clock()
            try:
                row = yield Transact(pending, self._tx_steps(pending, retry=backoff.tries > 0))
                break
            except Exception as exc:
                if isinstance(exc, LeaseLost):
                    telemetry.emit(
                        "write.fenced",
                        job_id=self.job.job_id,
                        attempt=self.job.attempt,
                        kind="chunk",
                    )
                if not _retryable(exc):
                    raise
                yield Sleep(self._retry_delay(exc, backoff, f"chunk {pending.number}"))
        self._committed(pending, row)
        telemetry.emit(
            "chunk.committed",
            job_id=self.job.job_id,
            task=self.job.task,
            rows=len(pending.items),
            failed=pending.failed,
            duration_s=self.clock() - started,
        )

    def _tx_steps(self, pending: PendingChunk[T], *, retry: bool) -> TxSteps:
        """Inside the chunk's transaction: [settle a lost commit], write, fenced checkpoint."""
        if retry:
            # The last try may have committed and then lost its connection before hearing
            # so: writing the chunk again would duplicate it. Ask the job row first.
            state = yield Execute(self.queries["chunk_job_state"], self._state_params())
            if state is not None and self._holds(state) and state[4] == pending.seq:
                return _SETTLED
            if state is not None and self._holds(state) and state[4] < pending.seq - 1:
                raise self._lost(state[4], pending)
        if pending.items:
            yield WRITE
        row = yield Execute(self.queries["chunk_commit"], self._commit_params(pending))
        if row is None:
            state = yield Execute(self.queries["chunk_job_state"], self._state_params())
            raise self._why_fenced(state, pending)
        return row  # type: ignore[no-any-return]

    def _retrying(
        self, what: str, effect: Callable[[], Fetch]
    ) -> Generator[Effect, Any, tuple[Any, ...] | None]:
        backoff = self._backoff()
        while True:
            try:
                row = yield effect()
                return row  # type: ignore[no-any-return]
            except Exception as exc:
                if not _retryable(exc):
                    raise
                yield Sleep(self._retry_delay(exc, backoff, what))

    # --- resume and fencing ------------------------------------------------------------------
    def _ids(self) -> dict[str, Any]:
        j = self.job
        return {"id": j.job_id, "attempt": j.attempt, "worker_id": j.worker_id, "claim": j.claim}

    def _state_params(self) -> dict[str, Any]:
        return {"id": self.job.job_id, "claim": self.job.claim}

    def _claim_name(self) -> None:
        runs = self.job.extra.setdefault("unbroken.chunk_runs", set())
        if self.name in runs:
            raise UnbrokenError(
                f"job {self.job.job_id} already ran chunks named {self.name!r} in this attempt; "
                "give each chunked run of a job its own name= (they checkpoint separately)"
            )
        runs.add(self.name)

    def _resume(self, row: tuple[Any, ...] | None) -> None:
        if row is None:
            raise LeaseLost(f"job {self.job.job_id} no longer exists")
        checkpoint, progress, job_size, task_size, held = row
        if not held:
            raise LeaseLost(
                f"job {self.job.job_id} attempt {self.job.attempt}: this worker does not hold "
                "the job's lease, so it may not run its chunks"
            )
        p: dict[str, Any] = progress or {}
        self.seq = int(p.get("seq", 0))
        self.finished = dict(p.get("finished", {}))
        if self.name in self.finished:  # done in an earlier attempt
            if p.get("run") != self.name:
                checkpoint = None  # the checkpoint is a later run's
            p = self.finished[self.name]
        elif p and p.get("run") != self.name and not p.get("done"):
            raise UnbrokenError(
                f"job {self.job.job_id} is in the middle of chunked run {p.get('run')!r}; "
                f"run {self.name!r} cannot start before it has finished"
            )
        elif p.get("run") != self.name:  # a new run: the last one's checkpoint is not ours
            p, checkpoint = {}, None
        self.position = self._start_position = int(p.get("position", 0))
        self.processed = int(p.get("processed", 0))
        self.failed = int(p.get("failed", 0))
        self.chunks = int(p.get("chunks", 0))
        self.errors = list(p.get("errors", []))
        self.done = bool(p.get("done", False))
        page_skip = int(p.get("page_skip", 0))
        if self.total is None:
            self.total = p.get("total")
        self.checkpoint = self.seek = self._page_before = self._page_after = checkpoint
        # A seekable source starts at the checkpoint (only a page's done items remain to
        # skip); any other source starts from the beginning and everything done is skipped.
        # So does a seekable one whose checkpoint is None: called with None, a source starts
        # from its beginning, whatever the checkpoint None was (the cursor that fetched the
        # first page, a page or item that had no next cursor), so `position` items are done.
        self._skip = page_skip if self.seekable and checkpoint is not None else self.position
        self._resize(job_size, task_size)
        self._started = self.clock()
        self._mode, self._exhausted, self._has_last = None, False, False
        self._page, self._page_taken, self._page_end_chunk = [], 0, False
        self._new_chunk()

    def _resize(self, job_size: int | None, task_size: int | None) -> None:
        """Most specific wins: the job's own size, the task's run-time setting, the size
        passed to run_chunks, the task's declared default (`@app.task(chunk_size=)`)."""
        declared = self.job.task_chunk_size
        self.size = job_size or task_size or self.chunk_size or declared or DEFAULT_CHUNK_SIZE

    def _holds(self, state: tuple[Any, ...]) -> bool:
        attempt, worker_id, job_state, lease_valid, _, same_claim = state
        return bool(
            attempt == self.job.attempt
            and worker_id == self.job.worker_id
            and job_state == "running"
            and same_claim
            and lease_valid
        )

    def _why_fenced(self, state: tuple[Any, ...] | None, pending: PendingChunk[T]) -> Exception:
        j = self.job
        head = f"job {j.job_id} attempt {j.attempt}: chunk {pending.number} rolled back"
        if state is None:
            return LeaseLost(f"{head}: the job no longer exists")
        attempt, worker_id, job_state, lease_valid, seq, same_claim = state
        if (attempt, worker_id, job_state) != (j.attempt, j.worker_id, "running"):
            return LeaseLost(
                f"{head}: the job moved on (now attempt {attempt}, state {job_state}, "
                f"worker {worker_id})"
            )
        if not same_claim:
            return LeaseLost(
                f"{head}: the database forgot this attempt's claim (a crash before it was "
                "flushed) and the job was claimed again"
            )
        if not lease_valid:
            return LeaseLost(f"{head}: its lease expired before the chunk could commit")
        if seq < pending.seq - 1:
            return self._lost(seq, pending)
        return UnbrokenError(
            f"{head}: {seq} chunks of it were committed, not {pending.seq - 1}; is another "
            "chunked run going on in the same job?"
        )

    def _lost(self, seq: int, pending: PendingChunk[T]) -> CommitsLost:
        return CommitsLost(
            f"job {self.job.job_id}: the database lost the last {pending.seq - 1 - seq} chunk "
            "commit(s) it had acknowledged, each with its checkpoint (a crash, or a failover "
            "to a replica that lagged); the run resumes from the checkpoint that survived"
        )

    def _commit_params(self, pending: PendingChunk[T]) -> dict[str, Any]:
        # Chunks need not wait for their WAL flush: a crash can only undo a chunk together
        # with its checkpoint, which is then redone exactly. The run's last commit waits,
        # and with it every earlier one (the WAL is flushed in order).
        wait = self.flush_each_chunk or pending.done
        return {
            "commit_mode": None if wait else "off",
            **self._ids(),
            "checkpoint": None if pending.checkpoint is None else Jsonb(pending.checkpoint),
            "progress": Jsonb(pending.progress),
            "lease": self.job.settings.lease_seconds,
            "base": pending.seq - 1,
        }

    # --- retries -------------------------------------------------------------------------------
    def _backoff(self) -> Backoff:
        s = self.job.settings
        policy = BackoffPolicy(s.retry_backoff_base, s.retry_backoff_cap)
        return Backoff(policy, max_tries=self.retries, clock=self.clock)

    def _retry_delay(self, exc: Exception, backoff: Backoff, what: str) -> float:
        """The wait before trying `what` again on a fresh connection, or the final error."""
        delay = backoff.failed()
        reason = f"{type(exc).__name__}: {redact(str(exc)).strip()}"
        if delay is None:
            raise UnitOfWorkFailed(
                f"job {self.job.job_id}: {what} failed {backoff.tries} times in a row on "
                f"transient errors; the next attempt resumes from the checkpoint. Last: {reason}",
                attempts=backoff.tries,
            ) from exc
        telemetry.emit(
            "chunk.retried",
            job_id=self.job.job_id,
            task=self.job.task,
            error_type=type(exc).__name__,
            tries=backoff.tries,
        )
        logger.warning(
            "job %s: %s failed (try %d/%d), retrying on a fresh connection in %.2f s: %s",
            self.job.job_id,
            what,
            backoff.tries,
            self.retries,
            delay,
            reason,
        )
        return delay

    # --- reading -------------------------------------------------------------------------------
    def want(self) -> int:
        """How many more things the runner should read from the source now (0: stop)."""
        if self._exhausted:
            return 0
        if self._consumed >= self.size:
            return 1 if self._past_cursorless_page() else 0
        if self._end_chunk and self._consumed:
            return 0
        if self._mode != "items":
            return 1  # one page at a time (or one item, until we know which it is)
        if self._skip:
            return min(self._skip, _SKIP_BATCH)
        return self.size - self._consumed

    def _past_cursorless_page(self) -> bool:
        """The full chunk ends with a page that has no next cursor (as APIs end their last
        page): its checkpoint, None, would send a resumed run back to the source's start.
        So read one more page before committing: the source usually ends there,
        and the chunk then commits `done` and a resumed run reads nothing again. A page
        that does follow waits for the next chunk, and the checkpoint stays None (resumed:
        the source's start, `position` items skipped) unless that page is empty."""
        return (
            self._mode == "pages"
            and self._page_after is None
            and self._page_taken >= len(self._page)
        )

    def exhausted(self) -> None:
        """The runner found the end of the source."""
        self._exhausted = True

    def add(self, got: list[Any]) -> None:
        """Take what the runner read: a list of items, or of pages."""
        if not got:
            return
        if self._mode is None:
            self._mode = "pages" if isinstance(got[0], Page) else "items"
            if self._mode == "pages" and self.cursor is not None:
                raise TypeError("cursor= applies to item sources; a Page carries its own cursor")
        if self._mode == "pages":
            for page in got:
                self._add_page(page)
            return
        if self._skip:
            dropped = min(self._skip, len(got))
            self._skip -= dropped
            got = got[dropped:]
            if not got:
                return
        if isinstance(got[-1], Page):
            raise TypeError("a source must yield either items or Pages, not both")
        self._last_raw, self._has_last = got[-1], True
        self._take_raw(got)

    def _add_page(self, page: Any) -> None:
        if not isinstance(page, Page):
            raise TypeError(f"a paged source yielded a {type(page).__name__}, not a Page")
        if page.total is not None:
            self.total = page.total
        self._page = list(page.items)
        self._page_end_chunk = page.end_chunk
        self._page_before, self._page_after = self._page_after, page.cursor
        self._page_taken = min(self._skip, len(self._page))
        self._skip -= self._page_taken
        self._drain_page()

    def _drain_page(self) -> None:
        room = self.size - self._consumed
        if room > 0 and self._page_taken < len(self._page):
            part = self._page[self._page_taken : self._page_taken + room]
            self._page_taken += len(part)
            self._take_raw(part)
        self._end_chunk = self._page_end_chunk and self._page_taken >= len(self._page)

    def _take_raw(self, raw: list[Any]) -> None:
        first = self.position + self._consumed  # the source index of raw[0]
        self._consumed += len(raw)
        if self.validate is None:
            self._items.extend(raw)  # the fast path: no Python-level loop per item
            return
        validate, items = self.validate, self._items
        for offset, item in enumerate(raw):
            try:
                items.append(validate(item))
            except Exception as exc:
                self._bad(first + offset, exc)
        self._check_bad()

    def _bad(self, index: int, exc: Exception) -> None:
        self._chunk_failed += 1
        if len(self.errors) + len(self._chunk_errors) < self.bad.sample:
            text = f"{type(exc).__name__}: {str(exc).strip()}"[:_ERROR_TEXT]
            self._chunk_errors.append({"position": index, "error": text})

    def _check_bad(self) -> None:
        failed = self.failed + self._chunk_failed
        seen = self.position + self._consumed
        limit = self.bad.max_count
        over = limit is not None and failed > limit
        ratio = self.bad.max_ratio
        if ratio is not None and seen >= self.bad.min_seen and failed / seen > ratio:
            over = True
        if not over:
            return
        errors = self.errors + self._chunk_errors
        allowed = " and ".join(
            part
            for part in (
                f"max_count={limit}" if limit is not None else "",
                f"max_ratio={ratio:g}" if ratio is not None else "",
            )
            if part
        )
        shown = "; ".join(f"item {e['position']}: {e['error']}" for e in errors[:3])
        raise BadRecordsExceeded(
            f"job {self.job.job_id}: {failed} of {seen} items failed validation, more than "
            f"BadRecords({allowed}) allows; first: {shown}",
            failed=failed,
            seen=seen,
            errors=errors,
        )

    # --- chunks ------------------------------------------------------------------------------
    def _new_chunk(self) -> None:
        self._items: list[T] = []
        self._consumed = 0
        self._chunk_failed = 0
        self._chunk_errors: list[dict[str, Any]] = []
        self._end_chunk = False
        if self._mode == "pages":
            self._drain_page()  # what the last chunk left of the current page comes first

    def _take(self) -> PendingChunk[T] | None:
        """The chunk to commit now, or None when there is nothing left to commit."""
        if not self._consumed and (not self._exhausted or self.done):
            return None
        page_skip = 0
        if self._mode == "pages":
            if self._page_taken < len(self._page):  # stopped inside a page
                checkpoint, page_skip = self._page_before, self._page_taken
            else:
                checkpoint = self._page_after
        elif self.cursor is not None:
            checkpoint = self.cursor(self._last_raw) if self._has_last else self.checkpoint
        else:
            checkpoint = self.position + self._consumed
        done = self._exhausted and (self._mode != "pages" or self._page_taken >= len(self._page))
        position = self.position + self._consumed
        elapsed = self.clock() - self._started
        rate = (position - self._start_position) / elapsed if elapsed > 0 else None
        # A total is what the source said (an argument, len(), the latest Page.total): it may
        # be stale, and a later page may say less. Items consumed are a fact: the total shown
        # is never below them (a CHECK on jobs.progress holds it), and once the source is read
        # to its end it is exactly what was consumed.
        total = self.total
        if done or (total is not None and total < position):
            total = position
        eta = (max(0, total - position) / rate) if total is not None and rate else None
        if done:
            eta = 0.0
        sample = (self.errors + self._chunk_errors)[: self.bad.sample]
        progress: dict[str, Any] = {
            "run": self.name,
            "seq": self.seq + 1,
            "position": position,
            "processed": self.processed + len(self._items),
            "failed": self.failed + self._chunk_failed,
            "total": total,
            "chunks": self.chunks + (1 if self._consumed else 0),  # not a bare "done" commit
            "chunk_size": self.size,
            "rate": round(rate, 3) if rate is not None else None,
            "eta_seconds": round(eta, 3) if eta is not None else None,
            "page_skip": page_skip,
            "done": done,
            "errors": sample,
            "attempt": self.job.attempt,
        }
        finished = dict(self.finished)
        if done:  # kept apart, so a later run in the same job does not hide this one
            finished[self.name] = {k: progress[k] for k in _FINISHED_KEYS}
        progress["finished"] = finished
        return PendingChunk(
            number=self.chunks + 1,
            items=self._items,
            seq=self.seq + 1,
            base=self.position,
            checkpoint=checkpoint,
            failed=self._chunk_failed,
            done=done,
            progress=progress,
        )

    def _committed(self, pending: PendingChunk[T], row: tuple[Any, ...] | None) -> None:
        p = pending.progress
        self.position, self.processed, self.failed = p["position"], p["processed"], p["failed"]
        self.chunks, self.errors, self.done = p["chunks"], p["errors"], pending.done
        self.checkpoint, self.total = pending.checkpoint, p["total"]
        self.seq, self.finished = p["seq"], p["finished"]
        self.job.checkpoint = pending.checkpoint  # task code sees the committed checkpoint
        if row:  # a settled commit (row == ()) tells nothing new about sizes
            self._resize(row[0], row[1])
        self._new_chunk()

    def progress(self) -> Progress:
        """The run's progress as of its last commit."""
        elapsed = self.clock() - self._started
        moved = self.position - self._start_position
        return Progress(
            job_id=self.job.job_id,
            position=self.position,
            processed=self.processed,
            failed=self.failed,
            total=self.total,
            chunks=self.chunks,
            chunk_size=self.size,
            rate=moved / elapsed if elapsed > 0 else None,
            eta_seconds=0.0 if self.done else None,
            done=self.done,
            checkpoint=self.checkpoint,
            errors=list(self.errors),
            run=self.name,
            finished=dict(self.finished),
        )
