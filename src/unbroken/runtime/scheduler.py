"""The scheduler: every worker enqueues its app's periodic tasks' due ticks.

Not the leader alone: a leader that restarts loses the ticks of its absence. Every worker
checks every schedule when its next tick comes (by the database's clock), each check one
transaction:

1. lock the schedule's row, SKIP LOCKED (a worker that finds it taken goes on: the holder
   enqueues what is due) and read its cursor, `checked_until`, and the server's now();
2. plan the ticks in (cursor, now] with the catch-up policy (unbroken.periodic);
3. insert them into `periodic_ticks` ON CONFLICT DO NOTHING and, in the same statement, a
   job for each tick inserted, so a tick never has two jobs even if two checks overlapped;
4. move the cursor to now, add the skipped ticks to the schedule's count, prune old ticks.

A worker killed anywhere in a check leaves nothing (its transaction rolls back), and the
next check of any worker starts from the cursor: no tick is lost or repeated. After an
outage the policy decides what the ticks of the outage come to; the skipped ones are
counted (`schedule.ticked` events, unbroken_schedule_ticks_missed_total) and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from unbroken import telemetry
from unbroken.db._async.pool import AsyncRolePool
from unbroken.enqueue import many_params
from unbroken.periodic import Plan, Schedule, catch_up_text
from unbroken.sql import Queries

if TYPE_CHECKING:
    from unbroken.app import Task
    from unbroken.settings import Settings

logger = logging.getLogger("unbroken.scheduler")
LONGEST_SLEEP = 1.0  # checks the clock at least this often (it may be set back or forth)
SHORTEST_SLEEP = 0.02
RETRY_AFTER = 1.0  # after a failed check


@dataclass(frozen=True)
class Checked:
    """What one check did (None from `check` when another worker held the schedule)."""

    enqueued: list[tuple[datetime, int]]  # (tick, job id)
    plan: Plan
    now: datetime  # the server's clock


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        pool: AsyncRolePool,
        queries: Queries,
        schedules: list[tuple[Schedule, Task[Any, Any]]],
        settings: Settings,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._pool = pool
        self._q = queries
        self._schedules = schedules
        self._settings = settings
        self._clock = clock
        self._due: dict[str, datetime] = {}  # next check per schedule, by our own clock

    def _params(self, schedule: Schedule, task: Task[Any, Any]) -> dict[str, Any]:
        return {
            "name": schedule.name,
            "cron": schedule.cron,
            "tz": schedule.tz,
            "catch_up": catch_up_text(schedule.catch_up),
            "queue": task.options.queue,
        }

    async def register(self) -> None:
        """Record (or update) every schedule of this app; their cursors are kept."""
        async with self._pool.connection() as conn:
            for schedule, task in self._schedules:
                await conn.execute(self._q["schedule_register"], self._params(schedule, task))

    async def run(self) -> None:
        while True:
            try:
                wait = await self.tick()
            except Exception as exc:
                logger.warning("periodic check failed (%s: %s)", type(exc).__name__, exc)
                wait = RETRY_AFTER
            await asyncio.sleep(wait)

    async def tick(self) -> float:
        """Check every schedule whose next tick has come; seconds until the next check."""
        for schedule, task in self._schedules:
            if self._due.get(schedule.name, datetime.min.replace(tzinfo=UTC)) <= self._clock():
                await self.check(schedule, task)
        now = self._clock()
        soonest = min(self._due.values(), default=now + timedelta(seconds=LONGEST_SLEEP))
        return min(LONGEST_SLEEP, max(SHORTEST_SLEEP, (soonest - now).total_seconds()))

    async def check(self, schedule: Schedule, task: Task[Any, Any]) -> Checked | None:
        """One check of one schedule (see the module's steps); None when another worker
        held it, or its row was missing (registered again)."""
        local_start = self._clock()

        async def work(conn: AsyncConnection[Any]) -> Checked | None:
            cur = await conn.execute(self._q["schedule_lock"], {"name": schedule.name})
            row = await cur.fetchone()
            if row is None:
                params = self._params(schedule, task)
                await conn.execute(self._q["schedule_insert_missing"], params)
                return None
            checked_until, now = row
            plan = await asyncio.to_thread(schedule.plan, checked_until, now)
            enqueued = await self._enqueue(conn, schedule, task, plan)
            last = enqueued[-1] if enqueued else (None, None)
            await conn.execute(
                self._q["schedule_advance"],
                {
                    "name": schedule.name,
                    "until": now,
                    "last_tick": last[0],
                    "last_job_id": last[1],
                    "missed": plan.skipped,
                },
            )
            before = now - timedelta(seconds=self._settings.retention_seconds)
            await conn.execute(
                self._q["periodic_tick_prune"], {"name": schedule.name, "before": before}
            )
            return Checked(enqueued, plan, now)

        checked = await self._pool.run(work)
        if checked is None:
            # Another worker is checking it now: look again soon, when it has moved on.
            self._due[schedule.name] = local_start + timedelta(seconds=LONGEST_SLEEP / 4)
            return None
        # The next tick by the server's clock, turned into ours.
        skew = checked.now - local_start
        self._due[schedule.name] = schedule.next_tick(checked.now) - skew
        self._report(schedule, checked)
        return checked

    async def _enqueue(
        self, conn: AsyncConnection[Any], schedule: Schedule, task: Task[Any, Any], plan: Plan
    ) -> list[tuple[datetime, int]]:
        if not plan.enqueue:
            return []
        jobs = [task.job(tick=schedule.local(t).isoformat()) for t in plan.enqueue]
        columns = many_params(jobs)
        params = {
            "name": schedule.name,
            "ticks": plan.enqueue,
            "queues": columns["queues"],
            "args": columns["args"],
            "priorities": columns["priorities"],
            "max_attempts": columns["max_attempts"],
        }
        cur = await conn.execute(self._q["periodic_enqueue"], params, prepare=False)
        return [(r[0], int(r[1])) for r in await cur.fetchall()]

    def _report(self, schedule: Schedule, checked: Checked) -> None:
        plan = checked.plan
        for tick, job_id in checked.enqueued:
            logger.debug("schedule %s: tick %s enqueued as job %d", schedule.name, tick, job_id)
        if plan.skipped:
            first = plan.skipped_first.isoformat() if plan.skipped_first else "?"
            last = plan.skipped_last.isoformat() if plan.skipped_last else "?"
            logger.warning(
                "schedule %s: %s%d missed ticks skipped (%s to %s) by catch_up=%s; %d enqueued",
                schedule.name,
                "" if plan.exact else "at least ",
                plan.skipped,
                first,
                last,
                catch_up_text(schedule.catch_up),
                len(checked.enqueued),
            )
        if checked.enqueued or plan.skipped:
            telemetry.emit(
                "schedule.ticked",
                schedule=schedule.name,
                enqueued=len(checked.enqueued),
                missed=plan.skipped,
            )
