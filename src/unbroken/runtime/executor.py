"""The executor: runs fetched jobs in bounded slots and turns each attempt into an Outcome.

Async tasks run as asyncio tasks on the worker's loop; sync tasks run in a thread pool.
No database connection is held while task code runs: the outcome goes to the completer's
buffer, and the slot is free again at once.

Timeouts: an async attempt over its timeout is cancelled. A sync attempt cannot be
interrupted from outside its thread: the executor stops waiting, frees the slot and
records the timeout, and sets `cancel_requested` on the job's context so code that calls
`current_job().check()` stops; until it does, the thread (and whatever it holds: a socket,
a lock, a connection of its own) stays busy. The thread pool has spare threads for this.
Its threads are daemons: a stuck one never keeps the worker process from exiting, and it
ends with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor as ConcurrentExecutor
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from unbroken import logs, telemetry
from unbroken.context import (
    JobContext,
    TaskProgress,
    parse_upstream,
    reset_current_job,
    set_current_job,
)
from unbroken.db.backoff import BackoffPolicy
from unbroken.enqueue import unstorable_in
from unbroken.errors import JobCancelled, LeaseLost, Snooze
from unbroken.runtime.completer import Completer, Outcome
from unbroken.runtime.rows import ClaimedJob
from unbroken.states import OutcomeKind, state_after

if TYPE_CHECKING:
    from unbroken.app import App, Task
    from unbroken.db._async.pool import AsyncDatabase
    from unbroken.db._sync.pool import Database
    from unbroken.settings import Settings

logger = logging.getLogger("unbroken.executor")
TRACEBACK_LIMIT = 16_000  # characters of traceback kept per attempt
UNKNOWN_TASK_CAP = 3600.0  # the longest wait between two offers of a job of an unknown task


class AttemptTimeout(Exception):
    """The attempt ran past its task's `timeout` (raised by the executor, not by tasks)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"attempt exceeded its timeout of {seconds:g} s")
        self.seconds = seconds


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
        self._fetching_stopped = False
        self._fetching_held = False  # memory above the soft limit (runtime/memory.py)
        # Spare threads so a few stuck sync attempts (timed out) do not eat the capacity.
        self._threads = DaemonThreads(settings.concurrency + 4, "unbroken-job")
        self.shutting_down = False
        # A job of a task this app lacks may be another app's (one database, shared queues),
        # or wait for a deploy: it goes back unspent, offered again after a delay that
        # doubles with each repeat (jittered +/-10 %), never dead by this path.
        self._unknown_task_delay = BackoffPolicy(
            base=settings.unknown_task_delay, cap=UNKNOWN_TASK_CAP, multiplier=2.0, jitter=0.2
        )

    # --- slots -------------------------------------------------------------------------------
    def free_slots(self) -> int:
        if self._fetching_held:
            return 0
        return self.concurrency - len(self.running)

    def hold_fetching(self, held: bool) -> None:
        """Offer no free slot while held (the producer waits), and wake it when released."""
        self._fetching_held = held
        if not held:
            self._slot_freed.set()

    async def wait_for_slots(self, wanted: int, timeout: float | None) -> None:
        """Return when `wanted` slots are free, or after `timeout` seconds with at least one;
        at once after `stop_fetching()`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.free_slots() < wanted and not self._fetching_stopped:
            self._slot_freed.clear()
            if deadline is None or self.free_slots() == 0:
                # Nothing free: sleep until a slot is (no polling while every slot is busy).
                await self._slot_freed.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), remaining)

    def stop_fetching(self) -> None:
        """Shutdown: release the producer if it is waiting for a slot to free up."""
        self._fetching_stopped = True
        self._slot_freed.set()

    def held(self) -> list[tuple[int, int, str]]:
        """(job id, attempt, claim) of every job running here."""
        return [(job_id, r.ctx.attempt, r.ctx.claim) for job_id, r in self.running.items()]

    def progress_unsent(self) -> dict[int, tuple[int, str]]:
        """{job id: (version, JSON)} of the progress reports not yet written."""
        unsent = {}
        for job_id, r in self.running.items():
            report = r.ctx.progress_unsent()
            if report is not None:
                unsent[job_id] = report
        return unsent

    def progress_sent(self, sent: dict[int, tuple[int, str]]) -> None:
        for job_id, (version, _) in sent.items():
            running = self.running.get(job_id)
            if running is not None:
                running.ctx.progress_sent(version)

    # --- running jobs ------------------------------------------------------------------------
    def start(self, job: ClaimedJob, args: dict[str, Any]) -> None:
        """Run a claimed job; `args` is its payload, decoded by the producer."""
        job_id, task_name, queue, attempt = job.id, job.task, job.queue, job.attempt
        max_attempts = job.max_attempts
        ctx = JobContext(
            job_id=job_id,
            attempt=attempt,
            max_attempts=max_attempts,
            worker_id=self._worker_id,
            task=task_name,
            queue=queue,
            args=args,
            checkpoint=job.checkpoint,
            chunk_size=job.chunk_size,
            rescues=job.rescues,
            claim=job.claim,
            settings=self._settings,
            schema=self._settings.schema_name,
            adb=self._adb,
            db=self._db,
            last_progress=TaskProgress.from_json(job.progress),
            workflow_id=job.workflow_id,
            upstream=parse_upstream(job.upstream),
        )
        declared = self._app.tasks.get(task_name)
        if declared is not None:
            ctx.task_chunk_size = declared.options.chunk_size
        logs.started(job_id, task_name, queue, attempt, max_attempts, self._worker_id)
        if telemetry.active():
            telemetry.emit(
                "job.started",
                job_id=job_id,
                task=task_name,
                queue=queue,
                attempt=attempt,
                wait_s=max(0.0, (datetime.now(UTC) - job.run_at).total_seconds()),
            )
        if job_id in self.running:
            # Claimed again while an older attempt still runs here: that attempt's lease was
            # lost (say the process was paused past it). Stop it, and let this attempt own
            # the job id, or the older one's exit would drop the newer one from `held()`.
            self.mark_lease_lost(job_id)
        # The slot is taken now (before the task first runs), so the next fetch sees it.
        task = asyncio.get_running_loop().create_task(self._run(ctx))
        self.running[job_id] = Running(ctx, task, time.monotonic())

    async def _run(self, ctx: JobContext) -> None:
        started = time.monotonic()
        outcome: Outcome | None
        try:
            outcome = await self._attempt(ctx, started)
        finally:
            current = self.running.get(ctx.job_id)
            if current is not None and current.ctx is ctx:  # not a newer attempt's entry
                del self.running[ctx.job_id]
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
        def done(kind: OutcomeKind, **kw: Any) -> Outcome:
            unsent = ctx.progress_unsent()  # the last report rides with the outcome
            return Outcome(
                ctx.job_id,
                ctx.attempt,
                ctx.claim,
                state_after(kind, ctx.attempt, ctx.max_attempts),
                kind,
                ctx.queue,
                ctx.task,
                runtime_ms=int((time.monotonic() - started) * 1000),
                max_attempts=ctx.max_attempts,
                progress=None if unsent is None else unsent[1],
                workflow_id=ctx.workflow_id,
                **kw,
            )

        task = self._app.tasks.get(ctx.task)
        if task is None:
            delay, error = await self._unknown_task(ctx)
            return done(OutcomeKind.UNKNOWN_TASK, delay=delay, error=error)
        token = set_current_job(ctx)
        try:
            result = await self._call(task, ctx)
        except Snooze as snooze:
            return done(OutcomeKind.SNOOZED, delay=snooze.seconds)
        except JobCancelled as exc:
            return done(OutcomeKind.CANCELLED, error=self._error_of(ctx, exc, "cancelled"))
        except LeaseLost:
            logger.info("job %d attempt %d stopped: lease lost", ctx.job_id, ctx.attempt)
            return None  # any write would be fenced: the job belongs to someone else now
        except AttemptTimeout as exc:
            ctx.cancel_requested = True  # a sync thread may still be running: ask it to stop
            return done(
                OutcomeKind.TIMEOUT,
                delay=task.options.retry.delay(ctx.attempt),
                error=self._error(ctx, "Timeout", str(exc), _tb(exc), "timeout"),
            )
        except asyncio.CancelledError:
            if self.shutting_down or ctx.lease_lost:
                # Shutdown grace ran out: hand the job back without spending the attempt.
                return None if ctx.lease_lost else done(OutcomeKind.HANDBACK)
            raise
        except Exception as exc:
            if task.options.permanent(exc):
                return done(OutcomeKind.DEAD, error=self._error_of(ctx, exc, "permanent"))
            return done(
                OutcomeKind.FAILED,
                delay=task.options.retry.delay(ctx.attempt),
                error=self._error_of(ctx, exc, "error"),
            )
        finally:
            reset_current_job(token)
        stored, problem = _result_json(result, self._settings.max_payload_bytes)
        if problem is None:
            return done(OutcomeKind.SUCCEEDED, result=stored)
        if ctx.workflow_id is None:
            logger.warning("job %d: return value not stored: %s", ctx.job_id, problem)
            return done(OutcomeKind.SUCCEEDED)
        # A workflow's dependents read it: a step whose result is lost must not pass.
        error = self._error(ctx, "ResultNotStorable", problem, None, "permanent")
        return done(OutcomeKind.DEAD, error=error)

    async def _call(self, task: Task[Any, Any], ctx: JobContext) -> Any:
        payload = ctx.args
        args = payload.get("args", [])
        kwargs = payload.get("kwargs", {})
        timeout = task.options.timeout
        # A TimeoutError the task raises itself (a socket, an HTTP client) is an ordinary
        # failure; only the attempt's own timeout running out becomes AttemptTimeout.
        if task.is_async:
            if timeout is None:
                return await task.fn(*args, **kwargs)
            limit = asyncio.timeout(timeout)
            try:
                async with limit:
                    return await task.fn(*args, **kwargs)
            except TimeoutError as exc:
                if limit.expired():
                    raise AttemptTimeout(timeout) from exc
                raise
        call: Callable[[], Any] = lambda: task.fn(*args, **kwargs)  # noqa: E731
        # The copied context carries current_job() into the thread.
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, contextvars.copy_context().run, call
        )
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            if future.cancelled():  # wait_for gave up on it (the thread may still run)
                raise AttemptTimeout(timeout) from exc
            raise

    async def _unknown_task(self, ctx: JobContext) -> tuple[float, str]:
        """The delay and error record for a job whose task this app does not have.

        A run of them keeps one record on the job (job_finish_many replaces the previous
        one): `times` counts the repeats and sets the delay, `first_at` says since when.
        """
        previous = await self._last_error(ctx.job_id)
        times, first_at = 1, datetime.now(UTC).isoformat()
        if previous is not None and previous.get("kind") == "unknown_task":
            times = int(previous.get("times") or 1) + 1
            first_at = str(previous.get("first_at") or previous.get("at") or first_at)
        delay = self._unknown_task_delay.delay(times)
        record = json.loads(
            self._error(
                ctx,
                "TaskNotFound",
                f"no task named {ctx.task!r} is registered in this worker's app; is the "
                "task's module imported by the worker's app, under the same name?",
                None,
                "unknown_task",
            )
        )
        record.update(times=times, first_at=first_at, retry_in=round(delay, 1))
        return delay, json.dumps(record)

    async def _last_error(self, job_id: int) -> dict[str, Any] | None:
        try:
            async with self._adb.pool("worker").connection() as conn:
                cur = await conn.execute(self._app.queries["job_get_last_error"], {"id": job_id})
                row = await cur.fetchone()
        except Exception as exc:  # the count starts over; the job is still given back
            logger.warning("job %d: could not read its last error (%s)", job_id, exc)
            return None
        found = row[0] if row else None
        return found if isinstance(found, dict) else None

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
        if self._is_async(running):
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
        for r in self.running.values():
            # A sync task's thread goes on after its asyncio side is cancelled: its next
            # check(), transaction() or chunk commit must stop it, for the job is handed
            # back and may start elsewhere before this process ends.
            r.ctx.cancel_requested = True
        tasks = [r.task for r in self.running.values()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


_Work = tuple[Future[Any], Callable[[], Any]]


class DaemonThreads(ConcurrentExecutor):
    """The threads sync tasks run in: started on demand, up to `max_workers`, and daemons.

    concurrent.futures.ThreadPoolExecutor joins its threads when the interpreter exits, so
    one sync attempt still running after its timeout, or after the shutdown grace (when
    its job has already been handed back), would keep the worker process alive until the
    task returned by itself. A daemon thread ends with the process instead; whatever it
    held (a transaction on its own connection, a socket) is released by the server and
    the kernel.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run new work after shutdown")
            future: Future[Any] = Future()
            self._work.put((future, functools.partial(fn, *args, **kwargs)))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            return future

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, call = work
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del work, future, call  # drop references before waiting for more
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            while cancel_futures:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
            for _ in self._threads:
                self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


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


def _result_json(result: Any, limit: int) -> tuple[str | None, str | None]:
    """The return value as JSON to store, or why it cannot be stored (not JSON, over the
    payload limit, text jsonb cannot hold)."""
    if result is None:
        return None, None
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return None, f"the return value is not JSON ({exc})"
    if len(text) > limit:
        return None, (
            f"the return value is {len(text):,} bytes of JSON, over the limit of {limit:,} "
            "(UNBROKEN_MAX_PAYLOAD_BYTES); store big data in a table and return its key"
        )
    if "\\u0000" in text or "\\ud" in text:
        bad = unstorable_in(text)
        if bad is not None:
            return None, f"the return value holds {bad}, which PostgreSQL cannot store as text"
    return text, None
