"""Random sequences of the real state-changing statements, checked against tests/model.py.

Hypothesis drives the named queries of sql/jobs.sql (the ones the runtime itself runs) on
a real database: enqueue (one, a batch, and the COPY path of enqueue_many), fetch, outcome
batches mixing current, stale and illegal outcomes, lease renewals, rescue, promotion,
cancellation, retry, pruning, pausing. After every step:
- no statement raised, so every CHECK constraint held on every row it wrote;
- a stale outcome or renewal (wrong attempt, wrong worker, job not running) left its row
  byte for byte as it was;
- every row equals the model's job, column by column.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.types.json import Jsonb

from model import Model, NewJob, Outcome
from model_draws import (
    QUEUES,
    WORKERS,
    draw_any_batch,
    draw_current_batch,
    draw_renewal,
    new_jobs,
    pick_ids,
)
from unbroken import migrations
from unbroken.db._sync.inserts import insert_many
from unbroken.enqueue import JobSpec
from unbroken.sql import queries

Q = queries()
HOUR = 3600.0
MINUS_A_MINUTE = -60.0  # a lease that has already run out
# Who a heartbeat says the worker is (it registers a worker the leader forgot).
IDENTITY = {"host": "test", "pid": 1, "queues": ["default"], "concurrency": 1}

ROWS = b"""
SELECT id, queue, priority, state::text, attempt, max_attempts, unique_key, worker_id,
       lease_expires_at IS NOT NULL, lease_expires_at < now(), rescues, cancel_requested,
       jsonb_array_length(errors), finished_at IS NOT NULL, run_at <= now()
FROM unbroken.jobs ORDER BY id
"""
FULL_ROWS = b"SELECT id, to_jsonb(j) FROM unbroken.jobs AS j"


def insert_params(new: NewJob) -> dict[str, Any]:
    return {
        "queue": new.queue,
        "task": "t",
        "args": Jsonb({}),
        "run_at": datetime.now(UTC) + timedelta(hours=1) if new.later else None,
        "priority": new.priority,
        "max_attempts": new.max_attempts,
        "unique_key": new.unique_key,
        "limit_key": None,
    }


def error_record(o: Outcome) -> str | None:
    if not o.error:
        return None
    return json.dumps({"attempt": o.attempt, "type": "E", "message": "m", "kind": "error"})


NEVER_CLAIMED = "2000-01-01 00:00:00+00"  # any outcome carrying it is fenced


class TransitionMachine(RuleBasedStateMachine):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self.conn = conn
        self.model = Model()
        self.claims: dict[int, str] = {}  # job id -> the claim token of its latest fetch

    # --- plumbing ---------------------------------------------------------------------------
    def run(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(Q[name], params)
        return cur.fetchall() if cur.description else []

    def full_rows(self) -> dict[int, Any]:
        return dict(self.conn.execute(FULL_ROWS).fetchall())

    @initialize()
    def empty_tables(self) -> None:
        self.conn.execute(
            b"TRUNCATE unbroken.jobs, unbroken.queues, unbroken.workers, "
            b"unbroken.stats_minutely RESTART IDENTITY"
        )

    # --- enqueue ----------------------------------------------------------------------------
    @rule(new=new_jobs)
    def insert(self, new: NewJob) -> None:
        [(job_id, created)] = self.run("job_insert", insert_params(new))
        assert (job_id, created) == self.model.insert(new, new_id=job_id)

    @rule(rows=st.lists(new_jobs, min_size=1, max_size=4))
    def insert_many(self, rows: list[NewJob]) -> None:
        params = [insert_params(r) for r in rows]
        got = self.run(
            "job_insert_many",
            {
                "queues": [p["queue"] for p in params],
                "tasks": ["t"] * len(rows),
                "args": ["{}"] * len(rows),
                "priorities": [p["priority"] for p in params],
                "run_ats": [p["run_at"] for p in params],
                "max_attempts": [p["max_attempts"] for p in params],
                "unique_keys": [p["unique_key"] for p in params],
                "limit_keys": [None for _ in params],
            },
        )
        ids = [r[0] for r in got]
        assert len(ids) == sum(self.model.insert_many_created(rows))
        assert self.model.insert_many(rows, ids) == ids

    @rule(rows=st.lists(new_jobs, min_size=1, max_size=4))
    def copy(self, rows: list[NewJob]) -> None:
        """The bulk path of enqueue_many: job_reserve_ids, then COPY (job_copy)."""
        plain = [NewJob(r.queue, r.priority, r.later, r.max_attempts) for r in rows]
        job_rows = [
            JobSpec(
                queue=r.queue,
                task="t",
                args="{}",
                priority=r.priority,
                run_at=insert_params(r)["run_at"],
                max_attempts=r.max_attempts,
                unique_key=None,
            )
            for r in plain
        ]
        ids = insert_many(self.conn, Q, job_rows)
        assert self.model.insert_many(plain, ids, query="job_copy") == ids

    # --- the worker's statements --------------------------------------------------------------
    @rule(
        worker=st.sampled_from(WORKERS),
        queues=st.sets(st.sampled_from(QUEUES), min_size=1),
        limit=st.integers(1, 3),
        expired=st.booleans(),
    )
    def fetch(self, worker: str, queues: set[str], limit: int, expired: bool) -> None:
        got = self.run(
            "job_get_available",
            {
                "queues": sorted(queues),
                "limit": limit,
                "worker_id": worker,
                "lease": MINUS_A_MINUTE if expired else HOUR,
            },
        )
        picked = self.model.fetch(worker, sorted(queues), limit, expired)
        assert {r[0] for r in got} == picked
        self.claims.update({r[0]: r[-1] for r in got})
        assert {r[0]: r[4] for r in got} == {i: self.model.jobs[i].attempt for i in picked}

    @precondition(lambda self: self.model.running())
    @rule(data=st.data())
    def finish_current(self, data: st.DataObject) -> None:
        """A worker reports on jobs it holds, with a stale outcome or two mixed in."""
        worker, outcomes = draw_current_batch(data, self.model, pick_ids(data, self.model))
        self.finish(worker, outcomes)

    @precondition(lambda self: self.model.jobs)
    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def finish_any(self, worker: str, data: st.DataObject) -> None:
        """A batch of outcomes, each current or stale (attempt, worker or state moved on)."""
        outcomes = draw_any_batch(data, self.model, pick_ids(data, self.model))
        self.finish(worker, outcomes)

    def finish(self, worker: str, outcomes: list[Outcome]) -> None:
        params = {
            "ids": [o.job_id for o in outcomes],
            "attempts": [o.attempt for o in outcomes],
            "states": [o.state for o in outcomes],
            "delays": [HOUR if o.later else 0.0 for o in outcomes],
            "errors": [error_record(o) for o in outcomes],
            "results": [None for _ in outcomes],
            "runtimes": [1 for _ in outcomes],
            # The job's latest claim; the model's stale outcomes are stale by attempt, state
            # or worker (a forgotten claim is tested below).
            "claims": [self.claims.get(o.job_id, NEVER_CLAIMED) for o in outcomes],
            "progress": None,
            "worker_id": worker,
        }
        before = self.full_rows()
        if self.model.finish_refused(worker, outcomes):
            # an illegal next state for a job it is current for: the whole batch is refused
            with pytest.raises((psycopg.errors.CheckViolation, psycopg.errors.DataError)):
                self.run("job_finish_many", params)
            assert self.full_rows() == before
            return
        got = self.run("job_finish_many", params)
        written = self.model.finish(worker, outcomes)
        assert {r[0]: r[1] for r in got} == written  # (the third column wakes workers)
        after = self.full_rows()
        for o in outcomes:
            if o.job_id not in written:  # stale: fenced, the row is exactly as it was
                assert after.get(o.job_id) == before.get(o.job_id)

    @precondition(lambda self: self.model.jobs)
    @rule(expired=st.booleans(), data=st.data())
    def renew(self, expired: bool, data: st.DataObject) -> None:
        """A heartbeat: the worker's own jobs (if it has any) and some stale or foreign ones."""
        worker, held = draw_renewal(data, self.model)
        before = self.full_rows()
        got = self.run(
            "lease_renew_many",
            {
                "ids": [h[0] for h in held],
                "attempts": [h[1] for h in held],
                "claims": [self.claims.get(h[0], NEVER_CLAIMED) for h in held],
                "progress": None,
                "lease": MINUS_A_MINUTE if expired else HOUR,
                "worker_id": worker,
                **IDENTITY,
            },
        )
        renewed = self.model.renew(worker, held, expired)
        assert dict(got) == renewed
        after = self.full_rows()
        for job_id, _ in held:
            if job_id not in renewed:
                assert after.get(job_id) == before.get(job_id)

    # --- the leader's statements ----------------------------------------------------------------
    @rule()
    def rescue(self) -> None:
        got = self.run("job_rescue_expired", {"limit": 1000, "restart_grace": 0})
        assert {r[0]: r[1] for r in got} == self.model.rescue()

    @rule()
    def promote(self) -> None:
        got = self.run("job_promote_due", {"limit": 1000})
        assert {r[0]: r[1] for r in got} == self.model.promote()

    @rule()
    def prune(self) -> None:
        params = {"older_than": 0, "states": ["succeeded", "dead", "cancelled"], "limit": 1000}
        got = self.run("job_prune_finished", params)
        assert sum(jobs for _, jobs in got) == len(self.model.prune())

    # --- the operator's statements --------------------------------------------------------------
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ids = pick_ids(data, self.model)
        got = self.run("job_cancel_many", {"ids": ids})
        assert dict(got) == self.model.cancel(ids)

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        ids = pick_ids(data, self.model)
        got = self.run("job_retry_many", {"ids": ids})
        assert {r[0] for r in got} == self.model.retry(ids)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.run("queue_set_paused", {"name": queue, "paused": paused})
        self.model.set_paused(queue, paused)

    # --- after every step ---------------------------------------------------------------------
    @invariant()
    def rows_match_the_model(self) -> None:
        real = self.conn.execute(ROWS).fetchall()
        expected = [
            (
                j.id,
                j.queue,
                j.priority,
                j.state,
                j.attempt,
                j.max_attempts,
                j.unique_key,
                j.worker_id,
                j.lease_expired is not None,
                j.lease_expired,
                j.rescues,
                j.cancel_requested,
                j.errors,
                j.finished,
                j.due(self.model.now),
            )
            for _, j in sorted(self.model.jobs.items())
        ]
        assert real == expected
        assert self.model.violations() == []


@pytest.mark.timeout(120)
def test_random_transitions_match_the_model(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        run_state_machine_as_test(
            lambda: TransitionMachine(conn),  # type: ignore[arg-type]  # a factory is fine
            settings=settings(
                max_examples=100,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


@pytest.mark.parametrize(
    ("name", "update"),
    [
        ("jobs_finished_iff_final", b"SET state = 'succeeded'"),
        ("jobs_finished_iff_final", b"SET finished_at = now()"),
        ("jobs_running_holds_lease", b"SET state = 'running', attempt = 1"),
        (
            "jobs_running_was_attempted",
            b"SET state = 'running', worker_id = 'w', lease_expires_at = now()",
        ),
        ("jobs_attempt_bounds", b"SET attempt = max_attempts + 1"),
        ("jobs_attempt_bounds", b"SET attempt = -1"),
        ("jobs_errors_is_array", b"SET errors = '{}'"),
    ],
)
def test_check_constraints_refuse_impossible_rows(
    database_url: str, name: str, update: bytes
) -> None:
    """The invariants the model checks are enforced by the schema itself, not by goodwill."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute(Q["job_insert"], insert_params(NewJob()))
        with pytest.raises(psycopg.errors.CheckViolation) as raised:
            conn.execute(b"UPDATE unbroken.jobs " + update)
        assert raised.value.diag.constraint_name == name


def test_a_claim_the_database_forgot_fences_what_its_attempt_writes(database_url: str) -> None:
    """A database that forgets an acknowledged claim (a failover to a replica that lagged)
    leaves the row available at the attempt before, and the same worker may claim it again,
    with the same attempt number, while it still runs the first claim. Whatever the first
    claim's attempt writes after that (a renewal, a chunk, its outcome) must change nothing."""
    fetch = {"queues": ["default"], "limit": 1, "worker_id": "w1", "lease": 60.0}
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute(b"TRUNCATE unbroken.jobs")
        job_id = conn.execute(Q["job_insert"], insert_params(NewJob())).fetchall()[0][0]
        [first] = conn.execute(Q["job_get_available"], fetch).fetchall()
        # What crash recovery leaves when the claim's commit had not reached the disk.
        conn.execute(
            b"UPDATE unbroken.jobs SET state = 'available', attempt = 0, worker_id = NULL,"
            b" lease_expires_at = NULL, attempted_at = NULL WHERE id = %s",
            [job_id],
        )
        [second] = conn.execute(Q["job_get_available"], fetch).fetchall()
        assert (first[0], first[4]) == (second[0], second[4]) == (job_id, 1)
        assert first[-1] != second[-1]

        def finish(*claims: str) -> list[tuple[Any, ...]]:
            n = len(claims)
            params = {
                "ids": [job_id] * n, "attempts": [1] * n, "states": ["succeeded"] * n,
                "delays": [None] * n, "errors": [None] * n, "results": ['"done"'] * n,
                "runtimes": [1] * n, "claims": list(claims), "progress": None, "worker_id": "w1",
            }  # fmt: skip
            return conn.execute(Q["job_finish_many"], params).fetchall()

        def chunk(claim: str) -> tuple[Any, ...] | None:
            params = {
                "commit_mode": None, "id": job_id, "attempt": 1, "worker_id": "w1",
                "claim": claim, "checkpoint": Jsonb(1), "progress": Jsonb({"seq": 1}),
                "lease": 60.0, "base": 0,
            }  # fmt: skip
            return conn.execute(Q["chunk_commit"], params).fetchone()

        def renew(claim: str) -> list[tuple[Any, ...]]:
            params = {"ids": [job_id], "attempts": [1], "claims": [claim], "lease": 60.0,
                      "progress": None, "worker_id": "w1", **IDENTITY}  # fmt: skip
            return conn.execute(Q["lease_renew_many"], params).fetchall()

        def held(claim: str) -> bool:
            ask = {"id": job_id, "attempt": 1, "worker_id": "w1", "claim": claim}
            row = conn.execute(Q["chunk_job_get"], ask).fetchone()
            assert row is not None
            return bool(row[4])

        before = conn.execute(FULL_ROWS).fetchall()
        assert (held(first[-1]), held(second[-1])) == (False, True)
        assert renew(first[-1]) == []
        assert chunk(first[-1]) is None
        assert finish(first[-1]) == []
        assert conn.execute(FULL_ROWS).fetchall() == before
        assert renew(second[-1]) == [(job_id, False)]
        assert chunk(second[-1]) is not None
        # Both runs' outcomes in one batch: only the second one's (2nd in the batch) counts.
        assert finish(first[-1], second[-1]) == [(job_id, "succeeded", None, 2)]
