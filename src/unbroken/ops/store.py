"""The operator store: what `unbroken jobs|dlq|queues|stats|...` and the dashboard read and do.

One small sync class over the named queries in `sql/admin.sql` (and the guarded writes in
`sql/jobs.sql`), so the CLI and the dashboard cannot disagree about what "stuck" or "a
dead-letter group" means. It takes either one connection (tests, scripts) or a pool from
`Database(...).pool(role)`, from which it borrows a connection per call. A pool's sessions
search pg_catalog and our schema only; a connection given to it may be the caller's, whose
search_path would let a function planted in `public` outmatch a built-in our SQL calls
(docs/security.md): each call runs in a transaction (a savepoint in the caller's) with our
search_path set for it, and the caller's set back after. Every query's rows
come back typed (unbroken.ops.rows), and every json/jsonb value is decoded by
`lenient_loads` on the store's own cursors (unbroken.ops.format).

Bulk actions walk the matching ids in ascending batches (keyset, not OFFSET) and apply the
guarded writes of jobs.sql to each batch: a job that changed state meanwhile is skipped by
the write itself, and a million-row action never holds one long transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from functools import cache, partial
from typing import Any, TypeVar

import psycopg
from psycopg import Connection, Cursor, sql
from psycopg.rows import RowFactory, class_row, kwargs_row, scalar_row, tuple_row
from psycopg.types.json import set_json_loads

from unbroken.db._sync.pool import RolePool
from unbroken.db.conninfo import safe_search_path
from unbroken.errors import ConfigError, UnbrokenError
from unbroken.ops.counts import Count, Matching
from unbroken.ops.filters import JobFilter
from unbroken.ops.format import lenient_loads
from unbroken.ops.rows import (
    BulkResult,
    ConnectionGroup,
    DeadGroup,
    HealthInputs,
    JobDetail,
    JobStateChange,
    JobSummary,
    LongJob,
    PipelineDeadLetter,
    PipelineDetail,
    PipelineInfo,
    PipelineSchemaChange,
    QueueInfo,
    ScheduleInfo,
    SeriesPoint,
    StateCount,
    StuckJob,
    TaskStats,
    WorkerInfo,
    WorkflowStep,
    WorkflowSummary,
)
from unbroken.runtime.pruner import PruneRun
from unbroken.sql import queries
from unbroken.states import FINAL, JobState

R = TypeVar("R")

# What the guarded writes of jobs.sql accept, in the order a confirmation lists them.
RETRYABLE_STATES = (JobState.DEAD, JobState.CANCELLED)  # job_retry_many
CANCELLABLE_STATES = (  # job_cancel_many: the LIVE states
    JobState.PENDING,
    JobState.SCHEDULED,
    JobState.AVAILABLE,
    JobState.RETRYABLE,
    JobState.RUNNING,
)
BATCH = 500  # ids per bulk write: one short statement each, progress visible between them
COUNT_CAP = 10_000  # a list counts what its filter matches this far, then says "10,000+"
SAMPLE_PAGES = 1000  # finished jobs are counted in full up to this many pages, then sampled
DEAD_SAMPLE = 5_000  # dead letters are grouped over this many of the newest dead jobs
SEARCH_LIMIT = 10_000  # a list filtering by age or arguments reads this many candidates at most
# Parts of admin.sql that other queries name as `{fragment}` (a fragment may name another).
FRAGMENTS = (
    "job_filter",
    "job_filter_indexed",
    "job_filter_searched",
    "job_search_window",
    "dead_letter_filter",
    "job_finished_sample",
)

Progress = Callable[[int], None]  # called with how many jobs a batch just covered


@dataclass(frozen=True)
class DeadLetterFilter:
    """The dead jobs a dead-letter count, retry or purge applies to (admin.sql's
    dead_letter_filter): one group by `key` (every group when None), a queue, a task, and
    those dead for longer than `older_than` seconds."""

    key: str | None = None
    queue: str | None = None
    task: str | None = None
    older_than: float | None = None

    def params(self) -> dict[str, Any]:
        return asdict(self)


EVERY_DEAD = DeadLetterFilter()


@cache
def statement(schema: str, name: str) -> bytes | sql.Composed:
    """The named query, with any shared condition it names composed in (psycopg.sql)."""
    named = queries(schema)

    def composed(text: bytes) -> sql.Composed:
        used = {f: composed(named[f]) for f in FRAGMENTS if b"{" + f.encode() + b"}" in text}
        return (
            sql.SQL(text.decode()).format(**used)
            if used
            else sql.Composed([sql.SQL(text.decode())])
        )

    text = named[name]
    return composed(text) if any(b"{" + f.encode() + b"}" in text for f in FRAGMENTS) else text


class OperatorStore:
    """Operator reads and actions over one connection or one pool."""

    def __init__(self, source: Connection[Any] | RolePool, schema: str = "unbroken") -> None:
        self._source = source
        self._schema = schema

    @contextmanager
    def _conn(self) -> Iterator[Connection[Any]]:
        if isinstance(self._source, RolePool):
            with self._source.connection() as conn:
                yield conn
            return
        conn = self._source
        path_set = statement(self._schema, "session_search_path_set")
        with conn.transaction(), conn.cursor(row_factory=scalar_row) as cur:
            previous = cur.execute(statement(self._schema, "session_search_path")).fetchone()
            cur.execute(path_set, {"path": safe_search_path(self._schema)})
            yield conn
            cur.execute(path_set, {"path": previous})  # an error: the rollback restores it

    @staticmethod
    def _cursor(conn: Connection[Any], row: RowFactory[R]) -> Cursor[R]:
        """A cursor building `row`s, whose JSON values are decoded by `lenient_loads` (the
        connection's own adapters are left alone: it may be the caller's)."""
        cur = conn.cursor(row_factory=row)
        set_json_loads(lenient_loads, cur)
        return cur

    def _rows(self, name: str, row: RowFactory[R], params: dict[str, Any] | None = None) -> list[R]:
        # Never prepared: a prepared statement may get one generic plan for every filter,
        # and `(%(x)s IS NULL OR ...)` only folds away (leaving the index that fits) when
        # the planner sees the values. Operator reads are rare; planning each costs little.
        with self._conn() as conn, self._cursor(conn, row) as cur:
            cur.execute(statement(self._schema, name), params or {}, prepare=False)
            return cur.fetchall()

    def _one(self, name: str, row: RowFactory[R], params: dict[str, Any] | None = None) -> R:
        rows = self._rows(name, row, params)
        if not rows:
            raise LookupError(f"query {name} returned no row")
        return rows[0]

    @staticmethod
    def _clock(conn: Connection[Any]) -> datetime:
        """The database's clock, so the ages shown agree with the rows' timestamps."""
        with conn.cursor(row_factory=scalar_row) as cur:
            now = cur.execute(b"SELECT now()").fetchone()
        return now if isinstance(now, datetime) else datetime.now().astimezone()

    def _ids(self, name: str, params: dict[str, Any]) -> list[int]:
        return self._rows(name, scalar_row, params)

    # --- jobs ---------------------------------------------------------------------------
    def job_page(
        self, flt: JobFilter, *, limit: int = 50, before_id: int | None = None
    ) -> tuple[list[JobSummary], Matching]:
        """One page of the jobs the filter matches, newest first, below `before_id`, and what
        the filter matches. A filter by age or arguments, which no index answers, or by
        queue or task on finished jobs, which no index is keyed by, is searched for among
        the newest SEARCH_LIMIT candidates only: the Matching says how far the search went
        and, when there were more, where it stopped."""
        jobs, search = self._search(flt, limit, before_id)
        return jobs, search if flt.searched else Matching(self.job_count_upto(flt))

    def job_list(
        self, flt: JobFilter, *, limit: int = 50, before_id: int | None = None
    ) -> list[JobSummary]:
        """job_page's jobs alone."""
        return self._search(flt, limit, before_id)[0]

    def _search(
        self, flt: JobFilter, limit: int, before_id: int | None
    ) -> tuple[list[JobSummary], Matching]:
        """A page and what its candidates held (sql/admin.sql job_search): a page's worth
        of them, or SEARCH_LIMIT for a filter that searches (JobFilter.searched)."""
        window = max(SEARCH_LIMIT, limit) if flt.searched else limit
        params = {**flt.params(), "limit": limit, "before_id": before_id, "window": window}
        ids, found, examined, oldest = self._one("job_search", tuple_row, params)
        jobs = self._rows("job_list", class_row(JobSummary), {"ids": ids}) if ids else []
        stopped = examined >= window and oldest is not None
        count = Count(found, "at_least" if stopped else "exact")
        return jobs, Matching(count, examined, oldest if stopped else None)

    def job_count(self, flt: JobFilter) -> int:
        """Every job the filter matches, exactly (what a bulk action asks confirmation for)."""
        count: int = self._one("job_count_matching", scalar_row, flt.params())
        return count

    def job_count_upto(self, flt: JobFilter, cap: int | None = None) -> Count:
        """How many jobs the filter matches: exact up to `cap`, else at least `cap`. A filter
        by age or arguments reads until it has counted that many: lists use job_page."""
        cap = COUNT_CAP if cap is None else cap
        params = {**flt.params(), "limit": cap + 1}
        counted: int = self._one("job_count_upto", scalar_row, params)
        return Count.upto(counted, cap)

    def task_names(self, name: str) -> list[str]:
        """Tasks that `name` may mean: itself, or those ending in `.name` (sorted), among the
        tasks of waiting and running jobs and of the newest SEARCH_LIMIT finished jobs of
        each final state (sql/admin.sql task_names_matching)."""
        params = {"name": name, "window": SEARCH_LIMIT}
        return self._rows("task_names_matching", scalar_row, params)

    def resolve_task(self, name: str | None) -> str | None:
        """The full task name an operator's `--task` means, as `unbroken enqueue` resolves it:
        the exact name when a job has it, else the one task whose name ends in `.name`.

        A name no job has is returned as given (it matches nothing); a short name that ends
        several tasks' names is a ConfigError that lists them.
        """
        if name is None:
            return None
        found = self.task_names(name)
        if name in found or not found:
            return name
        if len(found) == 1:
            return found[0]
        raise ConfigError(f"task {name!r} is ambiguous: {', '.join(found)}; give the full name")

    def job_get(self, job_id: int) -> JobDetail | None:
        with self._conn() as conn:
            build = kwargs_row(partial(JobDetail.from_row, now=self._clock(conn)))
            with self._cursor(conn, build) as cur:
                cur.execute(statement(self._schema, "job_get"), {"id": job_id})
                return cur.fetchone()

    def job_retry(self, ids: Sequence[int]) -> list[int]:
        """Put dead or cancelled jobs back in line; returns the ids that were."""
        return self._ids("job_retry_many", {"ids": list(ids)})

    def job_cancel(self, ids: Sequence[int]) -> list[JobStateChange]:
        """Cancel waiting jobs, ask running ones to stop; returns each one's state after."""
        return self._rows("job_cancel_many", class_row(JobStateChange), {"ids": list(ids)})

    def job_delete(self, ids: Sequence[int], states: Sequence[str] = tuple(FINAL)) -> list[int]:
        return self._ids("job_delete_many", {"ids": list(ids), "states": list(states)})

    def job_retry_matching(self, flt: JobFilter, progress: Progress | None = None) -> BulkResult:
        """Retry every dead or cancelled job the filter matches, in batches."""
        scoped = flt.restricted_to(RETRYABLE_STATES)
        return self._walk("job_ids_matching", scoped.params(), self.job_retry, progress)

    def job_cancel_matching(self, flt: JobFilter, progress: Progress | None = None) -> BulkResult:
        """Cancel every waiting or running job the filter matches, in batches."""
        scoped = flt.restricted_to(CANCELLABLE_STATES)
        return self._walk("job_ids_matching", scoped.params(), self._cancel_ids, progress)

    def _cancel_ids(self, ids: Sequence[int]) -> list[int]:
        return [change.id for change in self.job_cancel(ids)]

    def _walk(
        self,
        ids_query: str,
        params: dict[str, Any],
        action: Callable[[list[int]], list[int]],
        progress: Progress | None,
    ) -> BulkResult:
        after, matched, changed = 0, 0, []
        while True:
            ids = self._ids(ids_query, {**params, "after_id": after, "limit": BATCH})
            if not ids:
                break
            done = action(ids)
            matched += len(ids)
            changed.extend(done)
            after = ids[-1]
            if progress is not None:
                progress(len(ids))
        return BulkResult(matched, len(changed), changed[:1000])

    # --- queues -------------------------------------------------------------------------
    def state_counts(self) -> list[StateCount]:
        """Jobs per queue and state: exact while waiting or running, finished ones estimated
        from a sample of SAMPLE_PAGES pages once the table is larger (`exact` says which)."""
        return self._rows("job_count_by_state", class_row(StateCount), {"pages": SAMPLE_PAGES})

    def state_totals(self) -> dict[JobState, Count]:
        """Jobs per state over every queue (a Count: "~" when estimated); a state without
        jobs is left out."""
        totals: dict[JobState, Count] = {}
        for count in self.state_counts():
            before = totals.get(count.state, Count(0))
            exact = count.exact and before.kind == "exact"
            totals[count.state] = Count(before + count.jobs, "exact" if exact else "about")
        return totals

    def queue_list(self) -> list[QueueInfo]:
        """Every queue; its dead jobs are estimated as in state_counts."""
        params = {"pages": SAMPLE_PAGES}
        return self._rows("queue_list", kwargs_row(QueueInfo.from_row), params)

    def queue_in_use(self, name: str) -> bool:
        """Whether a job, a worker or an earlier pause or resume ever named this queue."""
        in_use: bool = self._one("queue_in_use", scalar_row, {"name": name})
        return in_use

    def queue_set_paused(self, name: str, paused: bool) -> None:
        with self._conn() as conn:
            conn.execute(
                statement(self._schema, "queue_set_paused"), {"name": name, "paused": paused}
            )

    # --- dead letters -------------------------------------------------------------------
    def dead_letter_groups(
        self, *, queue: str | None = None, task: str | None = None, limit: int = 200
    ) -> list[DeadGroup]:
        """The dead letters grouped by error, over the newest DEAD_SAMPLE dead jobs."""
        params = {"queue": queue, "task": task, "limit": limit, "sample": DEAD_SAMPLE}
        return self._rows("dead_letter_groups", class_row(DeadGroup), params)

    def dead_letter_count(self, flt: DeadLetterFilter = EVERY_DEAD) -> int:
        count: int = self._one("dead_letter_count", scalar_row, flt.params())
        return count

    def dead_letter_retry(
        self, flt: DeadLetterFilter = EVERY_DEAD, progress: Progress | None = None
    ) -> BulkResult:
        """Retry the dead letters the filter matches (one group, or all of them), in batches."""
        return self._walk("dead_letter_ids", flt.params(), self.job_retry, progress)

    def dead_letter_purge(
        self, flt: DeadLetterFilter = EVERY_DEAD, progress: Progress | None = None
    ) -> BulkResult:
        """Delete the dead letters the filter matches for good, in batches."""
        return self._walk("dead_letter_ids", flt.params(), self._delete_dead, progress)

    def _delete_dead(self, ids: Sequence[int]) -> list[int]:
        return self.job_delete(ids, (JobState.DEAD,))

    # --- retention ----------------------------------------------------------------------
    def prune_count(self, older_than_s: float, states: Sequence[JobState]) -> dict[str, int]:
        """Finished jobs of `states` past `older_than_s`, per state: what a prune deletes."""
        params = {"older_than": older_than_s, "states": list(states)}
        return dict(self._rows("job_prune_count", tuple_row, params))

    def prune(
        self,
        older_than_s: float,
        states: Sequence[JobState],
        batch: int,
        progress: Progress | None = None,
    ) -> PruneRun:
        """Delete them batch after batch (each its own short transaction, skipping locked
        rows, as the leader's pruner does) until a batch comes back short."""
        params = {"older_than": older_than_s, "states": list(states), "limit": batch}
        run = PruneRun()
        while not run.caught_up:
            rows: list[tuple[str, int]] = self._rows("job_prune_finished", tuple_row, params)
            run.batches += 1
            for state, jobs in rows:
                run.deleted[state] = run.deleted.get(state, 0) + jobs
            done = sum(jobs for _, jobs in rows)
            run.caught_up = done < batch
            if progress is not None:
                progress(done)
        # Then the workflows whose jobs are all gone, as the leader's pruner does.
        while len(self._ids("workflow_prune_empty", {"limit": batch})) == batch:
            pass
        return run

    # --- statistics ---------------------------------------------------------------------
    def task_stats(self, window_s: float = 3600.0) -> list[TaskStats]:
        build = kwargs_row(partial(TaskStats.from_row, minutes=max(window_s / 60.0, 1.0)))
        return self._rows("stats_by_task", build, {"window": window_s})

    def stats_series(
        self, window_s: float = 3600.0, bucket_s: int = 60, queue: str | None = None
    ) -> list[SeriesPoint]:
        params = {"window": window_s, "bucket": max(60, bucket_s), "queue": queue}
        return self._rows("stats_series", class_row(SeriesPoint), params)

    # --- runtime ------------------------------------------------------------------------
    def stuck_jobs(self, longer_than_s: float = 3600.0, limit: int = 200) -> list[StuckJob]:
        params = {"longer_than": longer_than_s, "limit": limit}
        return self._rows("job_list_stuck", class_row(StuckJob), params)

    def long_jobs(self, longer_than_s: float = 60.0, limit: int = 100) -> list[LongJob]:
        params = {"longer_than": longer_than_s, "limit": limit}
        return self._rows("job_list_progress", kwargs_row(LongJob.from_row), params)

    def worker_list(self, silent_after_s: float = 60.0) -> list[WorkerInfo]:
        params = {"silent_after": silent_after_s}
        return self._rows("worker_list", class_row(WorkerInfo), params)

    def schedule_list(self) -> list[ScheduleInfo]:
        """Every periodic task's schedule, with its next and latest tick."""
        return self._rows("schedule_list", kwargs_row(ScheduleInfo.from_row))

    # --- workflows ------------------------------------------------------------------------
    def workflow_list(self, limit: int = 50, before_id: int | None = None) -> list[WorkflowSummary]:
        """The newest workflows (older than `before_id` when given), with their jobs counted."""
        params = {"limit": limit, "before_id": before_id}
        return self._rows("workflow_list", class_row(WorkflowSummary), params)

    def workflow_get(self, workflow_id: int) -> tuple[str, list[WorkflowStep]] | None:
        """A workflow's name and its steps in order, or None when there is no such workflow."""
        names: list[str] = self._rows("workflow_get", scalar_row, {"id": workflow_id})
        if not names:
            return None
        steps = self._rows("workflow_steps", class_row(WorkflowStep), {"id": workflow_id})
        return names[0], steps

    def workflow_cancel(self, workflow_id: int) -> list[JobStateChange]:
        """Cancel a workflow's waiting jobs, ask its running ones to stop."""
        return self._rows("workflow_cancel", class_row(JobStateChange), {"id": workflow_id})

    def connection_list(self) -> list[ConnectionGroup]:
        return self._rows("connection_list", class_row(ConnectionGroup))

    # --- CDC pipelines -------------------------------------------------------------------
    def pipeline_list(self) -> list[PipelineInfo]:
        with _cdc_tables():
            return self._rows("pipeline_list", class_row(PipelineInfo))

    def pipeline_get(self, name: str, recent: int = 10) -> PipelineDetail | None:
        """The pipeline with its `recent` newest schema changes and dead letters."""
        params = {"name": name, "limit": recent}
        with _cdc_tables():
            found = self._rows("pipeline_get", class_row(PipelineDetail), params)
            if not found:
                return None
            changes = self._rows(
                "pipeline_schema_change_list", class_row(PipelineSchemaChange), params
            )
            dead = self._rows("pipeline_dead_letter_list", class_row(PipelineDeadLetter), params)
        return replace(found[0], recent_schema_changes=changes, recent_dead_letters=dead)

    def pipeline_mark_stopped(self, name: str, reason: str) -> bool:
        """Mark the pipeline stopped (its slot is gone), saying why; False when no such one."""
        with _cdc_tables():
            return bool(
                self._rows("pipeline_mark_stopped", scalar_row, {"name": name, "reason": reason})
            )

    def session_role(self) -> str:
        """The role this store's sessions run as (what a "permission denied" is about)."""
        role: str = self._one("session_role", scalar_row)
        return role

    def schema_version(self) -> int | None:
        """The newest applied migration, or None when the schema is not there at all."""
        try:
            version: int | None = self._one("schema_version", scalar_row)
        except psycopg.errors.UndefinedTable:
            return None
        return version

    def health_inputs(
        self,
        *,
        window_s: float = 900.0,
        lease_grace_s: float = 60.0,
        long_running_s: float = 3600.0,
        silent_after_s: float = 60.0,
    ) -> HealthInputs:
        params = {
            "window": window_s,
            "lease_grace": lease_grace_s,
            "long_running": long_running_s,
            "silent_after": silent_after_s,
        }
        return self._one("health_inputs", class_row(HealthInputs), params)


__all__ = [
    "CANCELLABLE_STATES",
    "COUNT_CAP",
    "DEAD_SAMPLE",
    "EVERY_DEAD",
    "RETRYABLE_STATES",
    "SEARCH_LIMIT",
    "DeadLetterFilter",
    "OperatorStore",
    "statement",
]


@contextmanager
def _cdc_tables() -> Iterator[None]:
    """A schema migrated before CDC existed: say so in one line, not a traceback."""
    try:
        yield
    except psycopg.errors.UndefinedTable:
        raise UnbrokenError(
            "this database has no CDC pipeline tables yet: run `unbroken db migrate`"
        ) from None
