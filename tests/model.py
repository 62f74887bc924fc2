"""A pure model of the job state machine, mirroring the named queries in sql/jobs.sql.

One method per query that changes a job's state; each does in Python what its statement
does in SQL, with a logical clock in place of `now()` (every statement is one tick, and
"later" means `FUTURE` ticks ahead, so nothing scheduled for later becomes due within a
test). Leases are either held or already expired: the integration test asks for a lease
of an hour or of minus a minute, which is all the state machine can tell apart.

tests/unit/test_state_machine.py checks the model against the invariants the schema's
CHECK constraints state and against the transition table in docs/state_machine.md;
tests/integration/test_transitions.py runs the real statements beside the model and
compares every row after every step. Together they pin the SQL to the drawn machine.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SCHEDULED, AVAILABLE, RUNNING, RETRYABLE = "scheduled", "available", "running", "retryable"
SUCCEEDED, DEAD, CANCELLED = "succeeded", "dead", "cancelled"
# A workflow's step waiting for its upstream jobs. The model writes no workflow (its edges
# are docs/state_machine.md's "Workflows" list, tested by tests/integration/test_workflows.py).
PENDING = "pending"
STATES = (PENDING, SCHEDULED, AVAILABLE, RUNNING, RETRYABLE, SUCCEEDED, DEAD, CANCELLED)
FINAL = frozenset({SUCCEEDED, DEAD, CANCELLED})
LIVE = frozenset({SCHEDULED, AVAILABLE, RUNNING, RETRYABLE})
# The next states a worker may ask for in job_finish_many (the executor decides: succeeded;
# retryable or, with no attempt left, dead; dead; cancelled; scheduled when snoozed;
# available when handed back at shutdown).
NEXT_STATES = (SUCCEEDED, RETRYABLE, DEAD, CANCELLED, SCHEDULED, AVAILABLE)
FUTURE = 10**9  # ticks: "an hour from now" in a test that lasts a few thousand statements
NEW = "(new)"  # the "from" state of an insert

# Every edge the state machine has: (from, to, the named query that takes it).
# docs/state_machine.md draws exactly these (a unit test compares the two).
TRANSITIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        (NEW, AVAILABLE, "job_insert"),
        (NEW, SCHEDULED, "job_insert"),
        (NEW, AVAILABLE, "job_insert_many"),
        (NEW, SCHEDULED, "job_insert_many"),
        (NEW, AVAILABLE, "job_copy"),
        (NEW, SCHEDULED, "job_copy"),
        (SCHEDULED, AVAILABLE, "job_promote_due"),
        (RETRYABLE, AVAILABLE, "job_promote_due"),
        (AVAILABLE, RUNNING, "job_get_available"),
        (RUNNING, SUCCEEDED, "job_finish_many"),
        (RUNNING, RETRYABLE, "job_finish_many"),
        (RUNNING, DEAD, "job_finish_many"),
        (RUNNING, CANCELLED, "job_finish_many"),
        (RUNNING, SCHEDULED, "job_finish_many"),
        (RUNNING, AVAILABLE, "job_finish_many"),
        (RUNNING, RETRYABLE, "job_rescue_expired"),
        (RUNNING, DEAD, "job_rescue_expired"),
        (RUNNING, CANCELLED, "job_rescue_expired"),
        (SCHEDULED, CANCELLED, "job_cancel_many"),
        (AVAILABLE, CANCELLED, "job_cancel_many"),
        (RETRYABLE, CANCELLED, "job_cancel_many"),
        (DEAD, AVAILABLE, "job_retry_many"),
        (CANCELLED, AVAILABLE, "job_retry_many"),
    }
)


class IllegalOutcome(ValueError):
    """job_finish_many refuses the whole batch (see Model.finish_refused)."""


@dataclass
class Job:
    id: int
    queue: str
    priority: int
    state: str
    run_at: int  # logical time: due when run_at <= the model's clock
    max_attempts: int
    unique_key: str | None
    attempt: int = 0
    worker_id: str | None = None
    lease_expired: bool | None = None  # None: no lease (not running)
    rescues: int = 0
    cancel_requested: bool = False
    errors: int = 0  # entries in the errors array
    finished: bool = False  # finished_at IS NOT NULL

    def due(self, now: int) -> bool:
        return self.run_at <= now


@dataclass(frozen=True)
class Outcome:
    """One element of a job_finish_many batch."""

    job_id: int
    attempt: int
    state: str  # the next state the worker asks for (NEXT_STATES)
    later: bool = False  # delay of an hour (else 0) for retryable and scheduled
    error: bool = False  # carries an error record


@dataclass(frozen=True)
class NewJob:
    queue: str = "default"
    priority: int = 0
    later: bool = False  # run_at an hour from now: scheduled
    max_attempts: int = 3
    unique_key: str | None = None


@dataclass
class Model:
    jobs: dict[int, Job] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    now: int = 0
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # every edge taken

    # --- helpers -----------------------------------------------------------------------------
    def tick(self) -> int:
        """One statement: `now()` moves on."""
        self.now += 1
        return self.now

    def advance(self) -> None:
        """Time passes (no statement): every lease runs out, every run_at comes."""
        self.now += 2 * FUTURE
        for job in self.jobs.values():
            if job.state == RUNNING:
                job.lease_expired = True

    def snapshot(self) -> Model:
        return copy.deepcopy(self)

    def same_jobs(self, other: Model) -> bool:
        return self.jobs == other.jobs and self.paused == other.paused

    def _move(self, job: Job, to: str, query: str) -> None:
        self.edges.append((job.state, to, query))
        job.state = to

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == RUNNING]

    def running_by_worker(self, pick: int) -> tuple[str, list[int]]:
        """One worker (by `pick`, among those holding jobs first) and the ids it holds."""
        holders = sorted({j.worker_id for j in self.running() if j.worker_id})
        others = [w for w in ("w1", "w2") if w not in holders]
        workers = holders + others
        worker = workers[pick % len(workers)]
        return worker, sorted(j.id for j in self.running() if j.worker_id == worker)

    def live_with_key(self, key: str | None) -> Job | None:
        if key is None:
            return None
        for job in self.jobs.values():
            if job.unique_key == key and job.state in LIVE:
                return job
        return None

    # --- job_insert / job_insert_many --------------------------------------------------------
    def insert(self, new: NewJob, new_id: int) -> tuple[int, bool]:
        """(id, created): the existing live job's id when its unique key is taken."""
        now = self.tick()
        existing = self.live_with_key(new.unique_key)
        if existing is not None:
            return existing.id, False
        self._create(new, new_id, now, "job_insert")
        return new_id, True

    def insert_many_created(self, rows: Sequence[NewJob]) -> list[bool]:
        """Which rows of a batch job_insert_many would create (first of a key wins)."""
        keys = {j.unique_key for j in self.jobs.values() if j.state in LIVE and j.unique_key}
        created = []
        for row in rows:
            ok = row.unique_key is None or row.unique_key not in keys
            if ok and row.unique_key is not None:
                keys.add(row.unique_key)
            created.append(ok)
        return created

    def insert_many(
        self, rows: Sequence[NewJob], new_ids: Iterable[int], query: str = "job_insert_many"
    ) -> list[int]:
        """Insert the rows a batch creates, with the ids the database gave them.

        `query` is job_insert_many, or job_copy (the COPY path for batches without unique
        keys, after job_reserve_ids took their ids), which creates every row.
        """
        assert query == "job_insert_many" or all(r.unique_key is None for r in rows)
        now = self.tick()
        ids = iter(new_ids)
        out = []
        for row, ok in zip(rows, self.insert_many_created(rows), strict=True):
            if ok:
                job_id = next(ids)
                self._create(row, job_id, now, query)
                out.append(job_id)
        return out

    def _create(self, new: NewJob, job_id: int, now: int, query: str) -> None:
        state = SCHEDULED if new.later else AVAILABLE
        self.edges.append((NEW, state, query))
        self.jobs[job_id] = Job(
            id=job_id,
            queue=new.queue,
            priority=new.priority,
            state=state,
            run_at=now + FUTURE if new.later else now,
            max_attempts=new.max_attempts,
            unique_key=new.unique_key,
        )

    # --- job_get_available -------------------------------------------------------------------
    def fetch(self, worker: str, queues: Sequence[str], limit: int, expired: bool) -> set[int]:
        self.tick()
        ready = sorted(
            (
                j
                for j in self.jobs.values()
                if j.state == AVAILABLE and j.queue in queues and j.queue not in self.paused
            ),
            key=lambda j: (-j.priority, j.run_at, j.id),
        )[:limit]
        for job in ready:
            self._move(job, RUNNING, "job_get_available")
            job.attempt += 1
            job.worker_id = worker
            job.lease_expired = expired
        return {j.id for j in ready}

    # --- job_finish_many ---------------------------------------------------------------------
    def current(self, worker: str, o: Outcome) -> bool:
        """The outcome is for the attempt the row is running, by this worker (not stale)."""
        job = self.jobs.get(o.job_id)
        return (
            job is not None
            and job.state == RUNNING
            and (job.attempt, job.worker_id) == (o.attempt, worker)
        )

    def finish_refused(self, worker: str, outcomes: Sequence[Outcome]) -> bool:
        """A current outcome asks for a state a worker may not ask for: the statement fails
        (the enum or jobs_running_holds_lease refuses it) and the batch changes nothing."""
        return any(self.current(worker, o) and o.state not in NEXT_STATES for o in outcomes)

    def finish(self, worker: str, outcomes: Sequence[Outcome]) -> dict[int, str]:
        """{id: new state} of the outcomes recorded; stale ones change nothing."""
        if self.finish_refused(worker, outcomes):
            raise IllegalOutcome(f"a next state outside {NEXT_STATES}")
        now = self.tick()
        written: dict[int, str] = {}
        for o in outcomes:
            job = self.jobs.get(o.job_id)
            if job is None or not self.current(worker, o):
                continue
            to = o.state
            if job.cancel_requested and to in (RETRYABLE, SCHEDULED, AVAILABLE):
                to = CANCELLED  # asked to stop: it is not run again
            elif to == RETRYABLE and job.attempt >= job.max_attempts:
                to = DEAD  # no attempt left: whatever the worker believed, it is dead
            if to in (SCHEDULED, AVAILABLE):
                job.attempt -= 1  # snoozed or handed back: not a failure, the attempt is given back
            if o.state in (RETRYABLE, SCHEDULED):  # as asked, even when overruled (final)
                job.run_at = now + FUTURE if o.later else now
            if o.error:
                job.errors += 1
            self._move(job, to, "job_finish_many")
            job.finished = to in FINAL
            job.worker_id = None
            job.lease_expired = None
            written[job.id] = to
        return written

    # --- lease_renew_many --------------------------------------------------------------------
    def renew(self, worker: str, held: Sequence[tuple[int, int]], expired: bool) -> dict[int, bool]:
        """{id: cancel_requested} of the leases renewed."""
        self.tick()
        out: dict[int, bool] = {}
        for job_id, attempt in held:
            job = self.jobs.get(job_id)
            if job is None or job.state != RUNNING:
                continue
            if job.attempt != attempt or job.worker_id != worker:
                continue
            job.lease_expired = expired
            out[job_id] = job.cancel_requested
        return out

    # --- job_rescue_expired ------------------------------------------------------------------
    def rescue(self) -> dict[int, str]:
        now = self.tick()
        out: dict[int, str] = {}
        for job in self.jobs.values():
            if job.state != RUNNING or not job.lease_expired:
                continue
            if job.cancel_requested:
                to = CANCELLED
            elif job.attempt >= job.max_attempts:
                to = DEAD
            else:
                to = RETRYABLE
            self._move(job, to, "job_rescue_expired")
            job.finished = to in FINAL
            job.run_at = now
            job.rescues += 1
            job.errors += 1
            job.worker_id = None
            job.lease_expired = None
            out[job.id] = to
        return out

    # --- job_promote_due ---------------------------------------------------------------------
    def promote(self) -> dict[str, int]:
        now = self.tick()
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            if job.state in (SCHEDULED, RETRYABLE) and job.due(now):
                self._move(job, AVAILABLE, "job_promote_due")
                counts[job.queue] = counts.get(job.queue, 0) + 1
        return counts

    # --- job_cancel_many ---------------------------------------------------------------------
    def cancel(self, ids: Iterable[int]) -> dict[int, str]:
        self.tick()
        out: dict[int, str] = {}
        for job_id in set(ids):
            job = self.jobs.get(job_id)
            if job is None or job.state not in LIVE:
                continue
            job.cancel_requested = True
            if job.state != RUNNING:
                self._move(job, CANCELLED, "job_cancel_many")
                job.finished = True
            out[job_id] = job.state
        return out

    # --- job_retry_many ----------------------------------------------------------------------
    def retry(self, ids: Iterable[int]) -> set[int]:
        now = self.tick()
        wanted = {i for i in set(ids) if i in self.jobs and self.jobs[i].state in (DEAD, CANCELLED)}
        # Of several finished jobs that share a unique key, only the newest goes back.
        chosen = set()
        for job_id in wanted:
            job = self.jobs[job_id]
            if job.unique_key is not None:
                if self.live_with_key(job.unique_key) is not None:
                    continue
                newest = max(i for i in wanted if self.jobs[i].unique_key == job.unique_key)
                if newest != job_id:
                    continue
            chosen.add(job_id)
        for job_id in chosen:
            job = self.jobs[job_id]
            self._move(job, AVAILABLE, "job_retry_many")
            job.run_at = now
            job.finished = False
            job.cancel_requested = False
            job.max_attempts = max(job.max_attempts, job.attempt + 1)
        return chosen

    # --- job_prune_finished (retention 0) ----------------------------------------------------
    def prune(self) -> set[int]:
        self.tick()
        gone = {i for i, j in self.jobs.items() if j.finished}
        for job_id in gone:
            del self.jobs[job_id]
        return gone

    # --- queue_set_paused --------------------------------------------------------------------
    def set_paused(self, queue: str, paused: bool) -> None:
        self.tick()
        if paused:
            self.paused.add(queue)
        else:
            self.paused.discard(queue)

    # --- what the schema's CHECK constraints (and the unique index) demand -------------------
    def violations(self) -> list[str]:
        found = []
        for j in self.jobs.values():
            if not (j.max_attempts >= 1 and 0 <= j.attempt <= j.max_attempts):
                found.append(f"job {j.id}: attempt {j.attempt} of {j.max_attempts}")
            if j.finished != (j.state in FINAL):
                found.append(f"job {j.id}: finished={j.finished} in state {j.state}")
            holds_lease = j.lease_expired is not None and j.worker_id is not None
            if (j.state == RUNNING) != holds_lease:
                found.append(f"job {j.id}: state {j.state} with lease/worker {holds_lease}")
            if j.state == RUNNING and j.attempt < 1:
                found.append(f"job {j.id}: running with attempt {j.attempt}")
            if j.state in (SCHEDULED, AVAILABLE, RETRYABLE) and j.attempt >= j.max_attempts:
                # not a CHECK, but what keeps job_get_available from ever violating one
                found.append(f"job {j.id}: waits in {j.state} with no attempt left")
        keys = [j.unique_key for j in self.jobs.values() if j.unique_key and j.state in LIVE]
        if len(keys) != len(set(keys)):
            found.append(f"two live jobs share a unique key: {sorted(keys)}")
        return found
