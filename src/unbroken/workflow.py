"""Workflows: jobs that run after other jobs, written together in one transaction.

    wf = app.workflow("nightly")
    raw = wf.step(extract.job("2025-06-01"))
    parts = wf.group([transform.job(n) for n in range(3)], after=raw)   # fan-out
    wf.step(load.job(), after=parts)                                   # fan-in (a join)
    workflow_id = wf.enqueue()                 # or wf.enqueue(conn=conn): your transaction

A step is a job (`task.job(...)`) and the steps it follows. A step with upstream steps is
written `pending` and becomes available in the same transaction as the last of its
upstream jobs succeeds (the trigger jobs_workflow_settle, migrations/0007_workflows.sql);
it reads their return values with `current_job().upstream_results()`, in the order they
were declared. An upstream job that ends dead or cancelled cancels the step, and the steps
after it, unless the step was declared `run_anyway=True`: then it runs (once all its
upstream jobs ended), and that upstream's result is None. `App.cancel_workflow(id)` cancels
every waiting step at once and asks running ones to stop, through their lease.

A step may only follow steps added before it, so a workflow never has a cycle. Steps take
no unique key: a step skipped as a duplicate would leave its dependents waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, Connection

from unbroken.db._async import inserts as ainserts
from unbroken.db._sync.inserts import insert_workflow
from unbroken.enqueue import JobSpec, name_problem
from unbroken.errors import EnqueueError

if TYPE_CHECKING:
    from unbroken.app import App

MAX_STEPS = 10_000  # one statement writes them all


@dataclass(eq=False)
class Step:
    """One job of a workflow and the steps it follows; `job_id` once enqueued."""

    workflow: Workflow
    index: int  # its place in the workflow, from 1
    job: JobSpec
    upstream: list[Step] = field(default_factory=list)
    run_anyway: bool = False
    job_id: int | None = None

    def after(self, *steps: Step | Iterable[Step]) -> Step:
        """Run this step after `steps` (steps, or lists of them, added before it); returns
        it, so `b = wf.step(t.job()).after(a)` reads in order."""
        self.workflow._check_open()
        for step in _flatten(steps):
            if step.workflow is not self.workflow:
                raise EnqueueError(
                    f"workflow {self.workflow.name}: step {self.index} ({self.job.task}) "
                    "cannot follow a step of another workflow"
                )
            if step.index >= self.index:
                raise EnqueueError(
                    f"workflow {self.workflow.name}: step {self.index} ({self.job.task}) can "
                    f"only follow steps added before it, not step {step.index} "
                    f"({step.job.task})"
                )
            if step not in self.upstream:
                self.upstream.append(step)
        return self

    def __repr__(self) -> str:
        after = ",".join(str(s.index) for s in self.upstream)
        return f"<Step {self.index} {self.job.task} after=[{after}]>"


def _flatten(items: Iterable[Step | Iterable[Step]]) -> list[Step]:
    found: list[Step] = []
    for item in items:
        if isinstance(item, Step):
            found.append(item)
        else:
            found.extend(_flatten(item))
    return found


class Workflow:
    """The steps of one workflow run, written together by `enqueue`; see the module."""

    def __init__(self, app: App, name: str) -> None:
        problem = name_problem("workflow name", name, 255)
        if problem is not None:
            raise EnqueueError(problem)
        self.app = app
        self.name = name
        self.steps: list[Step] = []
        self.id: int | None = None

    def __repr__(self) -> str:
        return f"<Workflow {self.name} steps={len(self.steps)} id={self.id}>"

    def _check_open(self) -> None:
        if self.id is not None:
            raise EnqueueError(f"workflow {self.name} was enqueued already (id {self.id})")

    def step(
        self,
        job: JobSpec,
        *,
        after: Step | Iterable[Step] = (),
        run_anyway: bool = False,
    ) -> Step:
        """Add a job (`task.job(...)`) that runs after the steps `after`; with
        `run_anyway=True` it runs even when one of them ends dead or cancelled."""
        self._check_open()
        if not isinstance(job, JobSpec):
            raise EnqueueError(
                f"workflow {self.name}: a step is a job made by task.job(...), "
                f"got {type(job).__name__}"
            )
        if job.unique_key is not None:
            raise EnqueueError(
                f"workflow {self.name}: step {len(self.steps) + 1} ({job.task}) has a unique "
                "key; a workflow's steps take none (a skipped duplicate would leave the "
                "steps after it waiting)"
            )
        if len(self.steps) >= MAX_STEPS:
            raise EnqueueError(f"workflow {self.name}: more than {MAX_STEPS:,} steps")
        new = Step(self, len(self.steps) + 1, job, run_anyway=bool(run_anyway))
        self.steps.append(new)
        return new.after(after)

    def group(
        self,
        jobs: Iterable[JobSpec],
        *,
        after: Step | Iterable[Step] = (),
        run_anyway: bool = False,
    ) -> list[Step]:
        """Add several jobs that each run after `after` (a fan-out); pass the list as a
        later step's `after` to join them (a fan-in)."""
        return [self.step(job, after=after, run_anyway=run_anyway) for job in jobs]

    def params(self) -> dict[str, Any]:
        """Column arrays for workflow_insert: the steps, then one entry per dependency."""
        if not self.steps:
            raise EnqueueError(f"workflow {self.name} has no steps")
        steps: Sequence[Step] = self.steps
        edges = [(s, up, pos) for s in steps for pos, up in enumerate(s.upstream, start=1)]
        return {
            "name": self.name,
            "queues": [s.job.queue for s in steps],
            "tasks": [s.job.task for s in steps],
            "args": [s.job.args for s in steps],
            "priorities": [s.job.priority for s in steps],
            "run_ats": [s.job.run_at for s in steps],
            "max_attempts": [s.job.max_attempts for s in steps],
            "upstream": [len(s.upstream) for s in steps],
            "limit_keys": [s.job.limit_key for s in steps],
            "dep_steps": [s.index for s, _, _ in edges],
            "dep_ons": [up.index for _, up, _ in edges],
            "dep_positions": [pos for _, _, pos in edges],
            "dep_anyway": [s.run_anyway for s, _, _ in edges],
        }

    def _written(self, workflow_id: int, job_ids: list[int]) -> int:
        self.id = workflow_id
        for step, job_id in zip(self.steps, job_ids, strict=True):
            step.job_id = job_id
        return workflow_id

    def enqueue(self, *, conn: Connection[Any] | None = None) -> int:
        """Write every step in one transaction (`conn`'s, if given); returns the
        workflow's id, and sets each step's `job_id`."""
        self._check_open()
        params = self.params()
        if conn is not None:
            return self._written(*insert_workflow(conn, self.app.queries, params))
        pool = self.app.database().pool("api")
        found = pool.run(lambda c: insert_workflow(c, self.app.queries, params))
        return self._written(*found)

    async def aenqueue(self, *, conn: AsyncConnection[Any] | None = None) -> int:
        """`enqueue` for async code."""
        self._check_open()
        params = self.params()
        if conn is not None:
            return self._written(*await ainserts.insert_workflow(conn, self.app.queries, params))
        adb = await self.app.adatabase()

        async def insert(c: AsyncConnection[Any]) -> tuple[int, list[int]]:
            return await ainserts.insert_workflow(c, self.app.queries, params)

        return self._written(*await adb.pool("api").run(insert))
