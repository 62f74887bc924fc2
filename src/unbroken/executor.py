"""The executor: runs fetched jobs in bounded slots and turns each attempt into an Outcome.

Async tasks run as asyncio tasks on the worker's loop; sync tasks run in a thread pool.
No database connection is held while task code runs: the outcome goes to the completer's
buffer, and the slot is free again at once.

Timeouts: an async attempt over its timeout is cancelled. A sync attempt cannot be
interrupted from outside its thread: the executor stops waiting, frees the slot and
records the timeout, and sets `cancel_requested` on the job's context so code that calls
`current_job().check()` stops; until it does, the thread (and whatever it holds: a socket,
a lock, a connection of its own) stays busy. The thread pool has spare threads for this.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from unbroken import telemetry
from unbroken.completer import Completer, Outcome
from unbroken.context import JobContext, reset_current_job, set_current_job
from unbroken.errors import JobCancelled, LeaseLost, Snooze

if TYPE_CHECKING:
    from unbroken.app import App, Task
    from unbroken.db._async.pool import AsyncDatabase
    from unbroken.db._sync.pool import Database
    from unbroken.settings import Settings

logger = logging.getLogger("unbroken.executor")
_STATE_OF_KIND = {
    "succeeded": "succeeded",
    "dead": "dead",
    "cancelled": "cancelled",
    "snoozed": "scheduled",  # runs again later; the attempt is given back
    "handback": "available",  # shutdown: someone else runs it now; the attempt is given back
}
TRACEBACK_LIMIT = 16_000  # characters of traceback kept per attempt


@dataclass
class Running:
    ctx: JobContext
    task: asyncio.Task[None]
    started: float


class Executor:
    def __init__(
        self,
        app: App,
        completer: Completer,
        settings: Settings,
        worker_id: str,
        adb: AsyncDatabase,
        db: Database,
    ) -> None:
        self._app = app
        self._completer = completer
        self._settings = settings
        self._worker_id = worker_id
        self._adb = adb
        self._db = db
        self.concurrency = settings.concurrency
        self.running: dict[int, Running] = {}
        self._slot_freed = asyncio.Event()
        # Spare threads so a few stuck sync attempts (timed out) do not eat the capacity.
        self._threads = ThreadPoolExecutor(
            max_workers=settings.concurrency + 4, thread_name_prefix="unbroken-job"
        )
        self.shutting_down = False

    # --- slots -------------------------------------------------------------------------------
    def free_slots(self) -> int:
        return self.concurrency - len(self.running)

    async def wait_for_slots(self, wanted: int, timeout: float | None) -> None:
        """Return when `wanted` slots are free, or after `timeout` seconds with at least one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.free_slots() < wanted:
            self._slot_freed.clear()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and self.free_slots() > 0:
                    return
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), max(remaining, 0.001))
                except TimeoutError:
                    continue
            else:
                await self._slot_freed.wait()

    def held(self) -> list[tuple[int, int]]:
        """(job id, attempt) of every job running here."""
        return [(job_id, r.ctx.attempt) for job_id, r in self.running.items()]

    # --- running jobs ------------------------------------------------------------------------
    def start(self, row: tuple[Any, ...]) -> None:
        job_id, queue, task_name, args, attempt, max_attempts, _prio, checkpoint, chunk_size = row[
            :9
        ]
        rescues, run_at = row[9], row[10]
        ctx = JobContext(
            job_id=job_id,
            attempt=attempt,
            max_attempts=max_attempts,
            worker_id=self._worker_id,
            task=task_name,
            queue=queue,
            args=args,
            checkpoint=checkpoint,
            chunk_size=chunk_size,
            rescues=rescues,
            settings=self._settings,
            schema=self._settings.schema_name,
            adb=self._adb,
            db=self._db,
        )
        if telemetry.active():
            telemetry.emit(
                "job.started",
                job_id=job_id,
                task=task_name,
                queue=queue,
                attempt=attempt,
                wait_s=max(0.0, (datetime.now(UTC) - run_at).total_seconds()),
            )
        # The slot is taken now (before the task first runs), so the next fetch sees it.
        task = asyncio.get_running_loop().create_task(self._run(ctx))
        self.running[job_id] = Running(ctx, task, time.monotonic())

    async def _run(self, ctx: JobContext) -> None:
        started = time.monotonic()
        outcome: Outcome | None
        try:
            outcome = await self._attempt(ctx, started)
        finally:
            self.running.pop(ctx.job_id, None)
            self._slot_freed.set()
        if outcome is not None and telemetry.active():
            telemetry.emit(
                "job.finished",
                job_id=ctx.job_id,
                task=ctx.task,
                queue=ctx.queue,
                attempt=ctx.attempt,
                outcome=outcome.kind,
                duration_s=outcome.runtime_ms / 1000,
                error_type=_error_type(outcome.error),
                error=outcome.error,
            )
        if outcome is not None:
            await self._completer.put(outcome)

    async def _attempt(self, ctx: JobContext, started: float) -> Outcome | None:
        def done(kind: str, **kw: Any) -> Outcome:
            if kind in ("failed", "timeout"):
                state = "dead" if ctx.attempt >= ctx.max_attempts else "retryable"
            else:
                state = _STATE_OF_KIND[kind]
            return Outcome(
                ctx.job_id,
                ctx.attempt,
                state,
                kind,
                ctx.queue,
                ctx.task,
                runtime_ms=int((time.monotonic() - started) * 1000),
                **kw,
            )

        task = self._app.tasks.get(ctx.task)
        if task is None:
            return done(
                "dead",
                error=self._error(
                    ctx,
                    "TaskNotFound",
                    f"no task named {ctx.task!r} is registered in this worker's app",
                    None,
                    "unknown_task",
                ),
            )
        token = set_current_job(ctx)
        try:
            result = await self._call(task, ctx)
        except Snooze as snooze:
            return done("snoozed", delay=snooze.seconds)
        except JobCancelled as exc:
            return done("cancelled", error=self._error_of(ctx, exc, "cancelled"))
        except LeaseLost:
            logger.info("job %d attempt %d stopped: lease lost", ctx.job_id, ctx.attempt)
            return None  # any write would be fenced: the job belongs to someone else now
        except TimeoutError as exc:
            ctx.cancel_requested = True  # a sync thread may still be running: ask it to stop
            message = f"attempt exceeded its timeout of {task.options.timeout:g} s"
            return done(
                "timeout",
                delay=task.options.retry.delay(ctx.attempt),
                error=self._error(ctx, "Timeout", message, _tb(exc), "timeout"),
            )
        except asyncio.CancelledError:
            if self.shutting_down or ctx.lease_lost:
                # Shutdown grace ran out: hand the job back without spending the attempt.
                return None if ctx.lease_lost else done("handback")
            raise
        except Exception as exc:
            if task.options.permanent(exc):
                return done("dead", error=self._error_of(ctx, exc, "permanent"))
            return done(
                "failed",
                delay=task.options.retry.delay(ctx.attempt),
                error=self._error_of(ctx, exc, "error"),
            )
        finally:
            reset_current_job(token)
        return done("succeeded", result=_result_json(ctx, result))

    async def _call(self, task: Task[Any, Any], ctx: JobContext) -> Any:
        payload = ctx.args
        args = payload.get("args", [])
        kwargs = payload.get("kwargs", {})
        timeout = task.options.timeout
        if task.is_async:
            if timeout is None:
                return await task.fn(*args, **kwargs)
            async with asyncio.timeout(timeout):
                return await task.fn(*args, **kwargs)
        call: Callable[[], Any] = lambda: task.fn(*args, **kwargs)  # noqa: E731
        # The copied context carries current_job() into the thread.
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, contextvars.copy_context().run, call
        )
        if timeout is None:
            return await future
        return await asyncio.wait_for(future, timeout)

    def _error_of(self, ctx: JobContext, exc: BaseException, kind: str) -> str:
        return self._error(ctx, type(exc).__qualname__, str(exc), _tb(exc), kind)

    def _error(self, ctx: JobContext, type_: str, message: str, tb: str | None, kind: str) -> str:
        return json.dumps(
            {
                "attempt": ctx.attempt,
                "at": datetime.now(UTC).isoformat(),
                "worker": self._worker_id,
                "type": type_,
                # jsonb cannot hold NUL characters; one in an error must not stop the write.
                "message": message[:4000].replace("\x00", "\\0"),
                "traceback": tb.replace("\x00", "\\0") if tb else tb,
                "kind": kind,
            }
        )

    # --- control ---------------------------------------------------------------------------
    def mark_lease_lost(self, job_id: int) -> None:
        running = self.running.get(job_id)
        if running is None:
            return
        running.ctx.lease_lost = True
        logger.warning(
            "job %d attempt %d: lease lost (rescued elsewhere); stopping it",
            job_id,
            running.ctx.attempt,
        )
        if self._app.tasks.get(running.ctx.task, None) is not None and self._is_async(running):
            running.task.cancel()

    def mark_cancel_requested(self, job_id: int) -> None:
        running = self.running.get(job_id)
        if running is not None and not running.ctx.cancel_requested:
            running.ctx.cancel_requested = True
            logger.info("job %d: cancel requested; the job sees it at its next check", job_id)

    def _is_async(self, running: Running) -> bool:
        task = self._app.tasks.get(running.ctx.task)
        return bool(task and task.is_async)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` for running jobs to finish; True if none is left."""
        tasks = [r.task for r in self.running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return not self.running

    async def hand_back_remaining(self) -> None:
        """Cancel what still runs after the grace period: each is handed back unspent."""
        self.shutting_down = True
        tasks = [r.task for r in self.running.values()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _tb(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text[-TRACEBACK_LIMIT:]


def _error_type(error: str | None) -> str | None:
    if error is None:
        return None
    try:
        return str(json.loads(error).get("type"))
    except ValueError:
        return None


def _result_json(ctx: JobContext, result: Any) -> str | None:
    if result is None:
        return None
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        logger.warning("job %d: return value is not JSON; not stored", ctx.job_id)
        return None
