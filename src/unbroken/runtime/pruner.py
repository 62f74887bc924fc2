"""The pruner: the leader deletes finished jobs past the retention, in batches, until caught up.

Each batch is one short statement (job_prune_finished): up to `prune_batch` of the oldest
finished jobs, skipping rows another transaction holds, so it never waits on a lock and no
worker ever waits on it (workers lock unfinished rows only). A run repeats batches until
one comes back short (caught up) or its time budget is spent; the leader's other duties
(renewing its term, rescue, promotion) then get their turn, and a pruner still behind runs
again at the next maintenance tick instead of after `prune_interval`. A backlog of
millions so goes at the database's delete rate (docs/retention.md), not a batch a minute.

Why batches and not partitions of finished jobs dropped whole: a partitioned jobs table
needs the partition key in its primary key and in every unique index (the unique-key
index included), and every statement that moves a job to a final state would move the
row between partitions. Batches keep the schema and every query as they are, and at the
measured rate they keep up with tens of millions of jobs a day.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unbroken import telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.runtime.rows import PRUNED_STATE
from unbroken.sql import Queries
from unbroken.states import FINAL

BUDGET = 0.25  # seconds of batches per maintenance tick: a catch-up takes a share of the
# database, not all of it (measured in docs/retention.md)


@dataclass
class PruneRun:
    """What one run deleted, by state, in how many batches, and whether it caught up."""

    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    caught_up: bool = False

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


class Pruner:
    def __init__(
        self,
        pool: AsyncRolePool,
        queries: Queries,
        settings: Any,
        clock: Callable[[], float] = time.monotonic,
        budget: float = BUDGET,
    ) -> None:
        self._pool = pool
        self._prune = queries["job_prune_finished"]
        self._prune_workflows = queries["workflow_prune_empty"]
        self._settings = settings
        self._clock = clock
        self._budget = budget
        self.pruned = 0

    async def run(self) -> PruneRun:
        """Batches until one comes back short (caught up) or the budget is spent."""
        s = self._settings
        params = {
            "older_than": s.retention_seconds,
            "states": [state.value for state in FINAL],
            "limit": s.prune_batch,
        }
        run = PruneRun()
        deadline = self._clock() + self._budget
        while not run.caught_up and self._clock() < deadline:
            async with self._pool.connection() as conn:
                cur = conn.cursor(row_factory=PRUNED_STATE)
                await cur.execute(self._prune, params)
                rows = await cur.fetchall()
            run.batches += 1
            for row in rows:
                run.deleted[row.state] = run.deleted.get(row.state, 0) + row.jobs
            run.caught_up = sum(row.jobs for row in rows) < s.prune_batch
        if run.caught_up:
            # Workflows whose last jobs are gone: deleted by this run, an operator's
            # `unbroken prune` or `dlq purge`, or an earlier run that ran out of budget.
            # One bounded delete per run; a backlog of them goes over the next runs.
            async with self._pool.connection() as conn:
                await conn.execute(self._prune_workflows, {"limit": self._settings.prune_batch})
        for state, count in run.deleted.items():
            telemetry.emit("jobs.pruned", state=state, count=count)
        self.pruned += run.total
        return run
