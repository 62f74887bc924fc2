"""The job state machine, as the pure model in tests/model.py (no database).

- Hypothesis runs random sequences of every state-changing statement (enqueue, fetch,
  outcome batches mixing current and stale outcomes, renewals, rescue, promotion,
  cancellation, retry, pruning, pausing) and checks after each step what the schema's
  CHECK constraints demand, that stale writes change nothing, that attempts only move as
  documented, and that from wherever it stands the machine cannot get stuck: with time
  passing and a worker that succeeds (or one that always fails) every job ends final.
- docs/state_machine.md draws exactly the model's edges, in its diagram and its table.
- A long random walk takes every documented edge, so none of them is dead text.

tests/integration/test_transitions.py runs the same sequences against the real SQL and
compares rows with this model, so what holds here holds for the statements.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from model import (
    AVAILABLE,
    CANCELLED,
    DEAD,
    FINAL,
    LIVE,
    NEW,
    NEXT_STATES,
    PENDING,
    RETRYABLE,
    RUNNING,
    SCHEDULED,
    STATES,
    SUCCEEDED,
    TRANSITIONS,
    IllegalOutcome,
    Model,
    NewJob,
    Outcome,
)
from model_draws import (
    QUEUES,
    WORKERS,
    draw_any_batch,
    draw_current_batch,
    draw_renewal,
    new_jobs,
    pick_ids,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "state_machine.md"


def run_to_the_end(model: Model, next_state: str, rounds: int) -> Model:
    """Time passes and one healthy worker answers every job with `next_state`."""
    m = model.snapshot()
    m.paused.clear()
    for _ in range(rounds):
        if all(j.state in FINAL for j in m.jobs.values()):
            break
        m.advance()
        m.rescue()
        m.promote()
        picked = m.fetch("w1", QUEUES, limit=1000, expired=False)
        m.finish("w1", [Outcome(i, m.jobs[i].attempt, next_state) for i in sorted(picked)])
    return m


class ModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.next_id = 1

    @rule(new=new_jobs)
    def insert(self, new: NewJob) -> None:
        before = self.model.live_with_key(new.unique_key)
        job_id, created = self.model.insert(new, new_id=self.next_id)
        self.next_id += 1
        if before is not None:  # a live unique key gives back the job that holds it
            assert (job_id, created) == (before.id, False)
        else:
            assert created
            assert self.model.jobs[job_id].state == (SCHEDULED if new.later else AVAILABLE)

    @rule(rows=st.lists(new_jobs, min_size=1, max_size=4))
    def insert_many(self, rows: list[NewJob]) -> None:
        created = self.model.insert_many_created(rows)
        ids = list(range(self.next_id, self.next_id + sum(created)))
        self.next_id += len(rows)
        assert self.model.insert_many(rows, ids) == ids

    @rule(rows=st.lists(new_jobs, min_size=1, max_size=4))
    def copy(self, rows: list[NewJob]) -> None:
        plain = [NewJob(r.queue, r.priority, r.later, r.max_attempts) for r in rows]
        ids = list(range(self.next_id, self.next_id + len(rows)))
        self.next_id += len(rows)
        assert self.model.insert_many(plain, ids, query="job_copy") == ids

    @rule(
        worker=st.sampled_from(WORKERS),
        queues=st.sets(st.sampled_from(QUEUES), min_size=1),
        limit=st.integers(1, 3),
        expired=st.booleans(),
    )
    def fetch(self, worker: str, queues: set[str], limit: int, expired: bool) -> None:
        before = self.model.snapshot()
        picked = self.model.fetch(worker, sorted(queues), limit, expired)
        assert len(picked) <= limit  # never more than the free slots
        waiting = [
            j
            for j in before.jobs.values()
            if j.state == AVAILABLE and j.queue in queues and j.queue not in before.paused
        ]
        assert len(picked) == min(limit, len(waiting))
        for job_id in picked:
            old, new = before.jobs[job_id], self.model.jobs[job_id]
            assert new.attempt == old.attempt + 1
            assert new.worker_id == worker
        # Nothing better was left behind: every waiting job not taken ranks after those taken.
        rank = {j.id: (-j.priority, j.run_at, j.id) for j in waiting}
        if picked and len(picked) < len(waiting):
            assert max(rank[i] for i in picked) < min(r for i, r in rank.items() if i not in picked)

    @precondition(lambda self: self.model.running())
    @rule(data=st.data())
    def finish_current(self, data: st.DataObject) -> None:
        """A worker reports on jobs it holds, with a stale outcome mixed in."""
        worker, outcomes = draw_current_batch(data, self.model, pick_ids(data, self.model))
        self.finish(worker, outcomes)

    @precondition(lambda self: self.model.jobs)
    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def finish_any(self, worker: str, data: st.DataObject) -> None:
        outcomes = draw_any_batch(data, self.model, pick_ids(data, self.model))
        self.finish(worker, outcomes)

    def finish(self, worker: str, outcomes: list[Outcome]) -> None:
        before = self.model.snapshot()
        if self.model.finish_refused(worker, outcomes):
            with pytest.raises(IllegalOutcome):
                self.model.finish(worker, outcomes)
            assert self.model.same_jobs(before)  # refused whole: nothing changed
            return
        written = self.model.finish(worker, outcomes)
        for o in outcomes:
            old = before.jobs.get(o.job_id)
            current = (
                old is not None
                and old.state == RUNNING
                and old.attempt == o.attempt
                and old.worker_id == worker
            )
            if not current:  # fenced: stale attempt, other worker, or not running
                assert o.job_id not in written
                assert self.model.jobs.get(o.job_id) == old
                continue
            assert old is not None
            new = self.model.jobs[o.job_id]
            assert written[o.job_id] == new.state
            if new.state in (SCHEDULED, AVAILABLE):  # snoozed or handed back: not spent
                assert new.attempt == old.attempt - 1
            else:
                assert new.attempt == old.attempt
            if old.cancel_requested:
                assert new.state in (SUCCEEDED, DEAD, CANCELLED)

    @precondition(lambda self: self.model.jobs)
    @rule(expired=st.booleans(), data=st.data())
    def renew(self, expired: bool, data: st.DataObject) -> None:
        worker, held = draw_renewal(data, self.model)
        before = self.model.snapshot()
        renewed = self.model.renew(worker, held, expired)
        for job_id, attempt in held:
            old = before.jobs.get(job_id)
            if job_id in renewed:
                assert old is not None
                assert (old.state, old.attempt, old.worker_id) == (RUNNING, attempt, worker)
            else:
                assert self.model.jobs.get(job_id) == old

    @rule()
    def rescue(self) -> None:
        before = self.model.snapshot()
        for job_id, state in self.model.rescue().items():
            old, new = before.jobs[job_id], self.model.jobs[job_id]
            assert old.state == RUNNING
            assert old.lease_expired
            assert new.rescues == old.rescues + 1
            assert new.attempt == old.attempt  # a rescue spends the attempt
            assert state == (
                CANCELLED
                if old.cancel_requested
                else DEAD
                if old.attempt >= old.max_attempts
                else RETRYABLE
            )

    @rule()
    def promote(self) -> None:
        self.model.promote()

    @rule()
    def advance(self) -> None:
        self.model.advance()

    @rule()
    def prune(self) -> None:
        before = self.model.snapshot()
        gone = self.model.prune()
        assert all(before.jobs[i].state in FINAL for i in gone)
        assert all(j.state not in FINAL for j in self.model.jobs.values())

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ids = pick_ids(data, self.model)
        before = self.model.snapshot()
        out = self.model.cancel(ids)
        for job_id in ids:
            old = before.jobs.get(job_id)
            if old is None or old.state in FINAL:
                assert job_id not in out
                assert self.model.jobs.get(job_id) == old
            elif old.state == RUNNING:  # asked, not forced: the job sees it at its heartbeat
                assert out[job_id] == RUNNING
                assert self.model.jobs[job_id].cancel_requested
            else:
                assert out[job_id] == CANCELLED

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        ids = pick_ids(data, self.model)
        before = self.model.snapshot()
        chosen = self.model.retry(ids)
        for job_id in chosen:
            old, new = before.jobs[job_id], self.model.jobs[job_id]
            assert old.state in (DEAD, CANCELLED)
            assert new.attempt < new.max_attempts  # it can run once more

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.model.set_paused(queue, paused)

    # --- after every step ---------------------------------------------------------------------
    @invariant()
    def what_the_check_constraints_demand(self) -> None:
        assert self.model.violations() == []

    @invariant()
    def only_drawn_edges_are_taken(self) -> None:
        assert set(self.model.edges) <= TRANSITIONS

    @rule()
    def nothing_gets_stuck(self) -> None:
        # A worker that succeeds: everything ends final (cancelled ones too).
        done = run_to_the_end(self.model, SUCCEEDED, rounds=3)
        assert all(j.state in FINAL for j in done.jobs.values())
        # A worker that always fails: every job ends dead or cancelled once its attempts are
        # spent, never later than max_attempts rounds (plus one to rescue, one to promote).
        worst = max((j.max_attempts for j in self.model.jobs.values()), default=0)
        failed = run_to_the_end(self.model, RETRYABLE, rounds=worst + 2)
        assert all(j.state in (DEAD, CANCELLED, SUCCEEDED) for j in failed.jobs.values())


TestModelMachine = ModelMachine.TestCase
TestModelMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)


# --- the drawing and the model agree ----------------------------------------------------------
def doc_text() -> str:
    if not DOC.exists():
        pytest.fail(f"{DOC} is missing")
    return DOC.read_text()


def test_the_table_in_the_doc_lists_exactly_the_model_edges() -> None:
    row = re.compile(r"^\|\s*`?([a-z()]+)`?\s*\|\s*`?([a-z]+)`?\s*\|\s*`([a-z_]+)`", re.M)
    table = {(f, t, q) for f, t, q in row.findall(doc_text()) if t in STATES}
    assert table == TRANSITIONS


def test_the_diagram_in_the_doc_draws_exactly_the_model_edges() -> None:
    text = doc_text()
    mermaid = text[text.index("```mermaid") : text.index("```", text.index("```mermaid") + 3)]
    arrow = re.compile(r"^\s*(\[\*\]|[a-z]+)\s*-->\s*([a-z]+)\s*:\s*(.+)$", re.M)
    drawn = set()
    for src, dst, label in arrow.findall(mermaid):
        for query in re.findall(r"\b(?:job|lease)_[a-z_]+", label):
            drawn.add((NEW if src == "[*]" else src, dst, query))
    assert drawn == TRANSITIONS


def test_a_long_random_walk_takes_every_documented_edge() -> None:
    rng = random.Random(3)
    m = Model()
    next_id = 1
    for _ in range(6000):
        op = rng.randrange(10)
        ids = sorted(m.jobs)
        some = rng.sample(ids, min(len(ids), rng.randint(0, 3)))
        if op == 0 or not ids:
            new = NewJob(
                queue=rng.choice(QUEUES),
                later=rng.random() < 0.3,
                max_attempts=rng.randint(1, 3),
                unique_key=rng.choice([None, None, "k1", "k2"]),
            )
            how = rng.randrange(3)
            if how == 0:
                m.insert(new, next_id)
            elif how == 1:
                m.insert_many([new], [next_id] if m.insert_many_created([new])[0] else [])
            else:
                plain = NewJob(queue=new.queue, later=new.later, max_attempts=new.max_attempts)
                m.insert_many([plain], [next_id], query="job_copy")
            next_id += 1
        elif op == 1:
            m.fetch(rng.choice(WORKERS), QUEUES, rng.randint(1, 3), rng.random() < 0.3)
        elif op in (2, 3):
            running = [m.jobs[i] for i in some if m.jobs[i].state == RUNNING]
            for j in running:
                assert j.worker_id is not None
                m.finish(j.worker_id, [Outcome(j.id, j.attempt, rng.choice(NEXT_STATES))])
        elif op == 4:
            m.rescue()
        elif op == 5:
            m.promote()
        elif op == 6:
            m.advance()
        elif op == 7:
            m.cancel(some)
        elif op == 8:
            m.retry(some)
        elif rng.random() < 0.2:
            m.prune()
        else:
            m.set_paused(rng.choice(QUEUES), rng.random() < 0.3)
        assert m.violations() == []
    assert set(m.edges) == TRANSITIONS


def test_live_and_final_states_partition_the_states() -> None:
    # pending: a workflow's step, which the model never writes (docs: "Workflows")
    assert set(STATES) == LIVE | FINAL | {PENDING}
    assert not LIVE & FINAL
