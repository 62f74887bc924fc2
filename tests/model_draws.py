"""What both state-machine tests draw: new jobs, job ids, outcome batches and heartbeats for
`tests/model.py`.

tests/unit/test_state_machine.py runs these through the model alone; the integration test
runs them through the real statements beside it. Drawing them in one place keeps the two
exploring the same machine.
"""

from __future__ import annotations

from hypothesis import strategies as st

from model import NEXT_STATES, Model, NewJob, Outcome

WORKERS = ("w1", "w2")
QUEUES = ("q1", "q2")

new_jobs = st.builds(
    NewJob,
    queue=st.sampled_from(QUEUES),
    priority=st.integers(-1, 1),
    later=st.booleans(),
    max_attempts=st.integers(1, 3),
    unique_key=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
)


def pick_ids(data: st.DataObject, model: Model) -> list[int]:
    """A few job ids: known ones, and one that does not exist."""
    known = sorted(model.jobs)
    ghost = max(known, default=0) + 1000
    return sorted(data.draw(st.sets(st.sampled_from([*known, ghost]), max_size=4)))


def draw_renewal(data: st.DataObject, model: Model) -> tuple[str, list[tuple[int, int]]]:
    """A heartbeat: a worker's own running jobs (if it has any), plus a few others, each at
    its attempt or one off (stale, or not yet reached)."""
    worker, mine = model.running_by_worker(data.draw(st.integers(0, 1)))
    held = [(j, model.jobs[j].attempt) for j in mine]
    for job_id in pick_ids(data, model):
        if job_id not in mine:
            job = model.jobs.get(job_id)
            offset = data.draw(st.sampled_from([0, 0, 1, -1]))
            held.append((job_id, (job.attempt if job else 1) + offset))
    return worker, held


def draw_outcome(data: st.DataObject, job_id: int, attempt: int) -> Outcome:
    """An outcome asking for any next state, a state a worker may not ask for, or nonsense."""
    return Outcome(
        job_id=job_id,
        attempt=attempt,
        state=data.draw(st.sampled_from([*NEXT_STATES, *NEXT_STATES, "running", "bogus"])),
        later=data.draw(st.booleans()),
        error=data.draw(st.booleans()),
    )


def draw_current_batch(
    data: st.DataObject, model: Model, other_ids: list[int]
) -> tuple[str, list[Outcome]]:
    """A worker reporting on jobs it holds, with one stale outcome mixed in."""
    holders = len({j.worker_id for j in model.running()})
    worker, mine = model.running_by_worker(data.draw(st.integers(0, holders - 1)))
    chosen = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=3, unique=True))
    outcomes = [draw_outcome(data, j, model.jobs[j].attempt) for j in chosen]
    for job_id in other_ids[:1]:
        if job_id not in chosen:
            job = model.jobs.get(job_id)
            outcomes.append(draw_outcome(data, job_id, (job.attempt if job else 1) - 1))
    return worker, outcomes


def draw_any_batch(data: st.DataObject, model: Model, ids: list[int]) -> list[Outcome]:
    """Outcomes for any jobs, current or not, with attempts around the current one."""
    outcomes = []
    for job_id in ids:
        job = model.jobs.get(job_id)
        attempt = (job.attempt if job else 1) + data.draw(st.sampled_from([0, 0, 1, -1]))
        outcomes.append(draw_outcome(data, job_id, attempt))
    return outcomes
