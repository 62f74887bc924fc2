"""A worker process: the producer, executor, completer, lease keeper, listener, scheduler of
periodic tasks and (on the leader) maintenance, sharing one small pool.

Connections: a pool of at most 3 for the runtime's own statements (fetch, outcome batches,
heartbeat and maintenance), plus the listener's dedicated one, whatever the concurrency.
Chunked jobs get their own bounded "chunks" pool, and task code's `current_job()
.transaction()` the "tasks" pool (at most `pool_max_size` each, sync and async), opened
only when used: user code waiting for a connection never delays a heartbeat.

Shutdown (SIGTERM or SIGINT): stop fetching; running jobs get `shutdown_timeout`; what
still runs is cancelled and handed back without spending an attempt; buffered outcomes
are written; leadership is resigned. A second signal exits at once: leases expire and the
rescuer returns the jobs. Above the hard memory limit the same shutdown runs with no
grace, and `exit_code` says why (runtime/memory.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from unbroken.context import TASKS_POOL
from unbroken.db._async.pool import AsyncDatabase, AsyncRolePool
from unbroken.db._sync.pool import Database
from unbroken.errors import ConfigError
from unbroken.runtime.completer import Completer
from unbroken.runtime.elector import Elector, term_for
from unbroken.runtime.executor import Executor
from unbroken.runtime.leases import LeaseKeeper
from unbroken.runtime.maintenance import Maintenance
from unbroken.runtime.memory import MemoryGuard
from unbroken.runtime.notifier import Notifier
from unbroken.runtime.producer import Producer
from unbroken.runtime.scheduler import Scheduler
from unbroken.settings import Settings, describe_validation_error

if TYPE_CHECKING:
    from unbroken.app import App

logger = logging.getLogger("unbroken.worker")
RUNTIME_POOL_MAX = 3
BURST_WAIT_SECONDS = 30.0  # a burst worker waits for jobs due within this long


class Worker:
    def __init__(
        self,
        app: App,
        *,
        burst: bool = False,
        burst_wait: float = BURST_WAIT_SECONDS,
        handle_signals: bool = True,
        **overrides: Any,
    ) -> None:
        self.app = app
        self.settings = _merge(app.settings, overrides)
        self.burst = burst
        self.burst_wait = burst_wait
        self.handle_signals = handle_signals
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._grace = self.settings.shutdown_timeout
        self.exit_code = 0  # the process's exit code: MEMORY_EXIT_CODE past the hard limit
        self.started = threading.Event()
        self.executor: Executor | None = None
        self.completer: Completer | None = None
        self.maintenance: Maintenance | None = None
        self.adb: AsyncDatabase | None = None

    # --- running -----------------------------------------------------------------------------
    def run(self) -> None:
        """Run until stopped (SIGTERM/SIGINT, `stop()`, or, in burst mode, once no job of its
        queues is available or due within `burst_wait` seconds)."""
        asyncio.run(self.arun())

    def stop(self) -> None:
        """Ask a running worker to shut down gracefully (callable from any thread)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def arun(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        target = await asyncio.to_thread(self.app.target)
        await asyncio.to_thread(self.app.migrate)
        queries = self.app.queries

        adb = self.adb = AsyncDatabase(target.conninfo, s)
        pool = adb.pool("worker", min_size=1, max_size=RUNTIME_POOL_MAX)
        adb.pool("chunks", min_size=0)
        adb.pool(TASKS_POOL, min_size=0)
        await adb.open()
        db = Database(target.conninfo, s)
        db.pool("chunks", min_size=0)
        db.pool(TASKS_POOL, min_size=0)
        await asyncio.to_thread(db.open)

        completer = self.completer = Completer(pool, queries, self.worker_id, s)
        executor = self.executor = Executor(self.app, completer, s, self.worker_id, adb, db)
        producer = Producer(pool, queries, executor, s, self.worker_id, completer)
        keeper = LeaseKeeper(pool, queries, executor, completer, s, self.worker_id)
        notifier = None
        if s.uses_listen():
            notifier = Notifier(target.conninfo, s, s.queue_list(), producer.wake.set, queries)
        # The listener's session lives as long as this process: its lock marks us alive.
        elector = Elector(
            pool,
            queries,
            self.worker_id,
            term_seconds=term_for(s.lease_seconds),
            lock_key=lambda: notifier.lock_key if notifier is not None else None,
        )
        maintenance = self.maintenance = Maintenance(pool, queries, s)
        await keeper.register()
        scheduler = None
        if self.app.schedules:  # every worker checks them, not only the leader
            scheduler = Scheduler(pool, queries, list(self.app.schedules.values()), s)
            await scheduler.register()
        async with pool.connection() as conn:  # before the first fetch: it enforces them
            for limit in self.app.limits.values():
                await conn.execute(queries["flow_limit_register"], limit.params())
            cur = await conn.execute(queries["flow_limit_any"])
            row = await cur.fetchone()
        if row is not None and row[0]:
            producer.enforce_limits(queries)
            completer.after_write = producer.wake.set
        self._observe(adb)

        background = [
            asyncio.create_task(completer.run(), name="completer"),
            asyncio.create_task(keeper.run(), name="lease-keeper"),
        ]
        if notifier is not None:
            background.append(asyncio.create_task(notifier.run(), name="listener"))
            try:
                await asyncio.wait_for(notifier.connected.wait(), 5.0)
            except TimeoutError:
                logger.warning("listener not connected yet; polling until it is")
        # After the listener: a term we take then names its lock from the start.
        background.append(
            asyncio.create_task(
                elector.run(maintenance.tick, min(s.promote_interval, s.rescue_interval)),
                name="elector",
            )
        )
        if scheduler is not None:
            background.append(asyncio.create_task(scheduler.run(), name="scheduler"))
        guard = MemoryGuard(s, executor, self._exit_for_memory)
        if guard.enabled:
            background.append(asyncio.create_task(guard.run(), name="memory"))
        producing = asyncio.create_task(producer.run(), name="producer")
        if self.burst:
            background.append(asyncio.create_task(self._burst_watch(producer, pool), name="burst"))
        self._install_signals()
        logger.info(
            "worker %s started: queues %s, concurrency %d, database %s",
            self.worker_id,
            ",".join(s.queue_list()),
            s.concurrency,
            target.describe(),
        )
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(
                pool, producer, producing, executor, completer, elector, background
            )
            await adb.close()
            await asyncio.to_thread(db.close)
            executor.close()
            self._remove_signals()
        logger.info(
            "worker %s stopped: %d outcomes written, %d fenced",
            self.worker_id,
            completer.written,
            completer.fenced,
        )

    async def _shutdown(
        self,
        pool: AsyncRolePool,
        producer: Producer,
        producing: asyncio.Task[None],
        executor: Executor,
        completer: Completer,
        elector: Elector,
        background: list[asyncio.Task[None]],
    ) -> None:
        producer.stopping = True
        producer.wake.set()
        executor.stop_fetching()  # the producer may be waiting for a slot to free up
        await asyncio.wait([producing], timeout=self.settings.deadline())
        if executor.running and self._grace:
            logger.info(
                "waiting up to %.0f s for %d running jobs", self._grace, len(executor.running)
            )
        if not await executor.wait_idle(self._grace):
            logger.warning("handing back %d unfinished jobs", len(executor.running))
            await executor.hand_back_remaining()
        await completer.drain(timeout=max(10.0, self.settings.deadline()))
        for task in background:
            task.cancel()
        await asyncio.gather(*background, producing, return_exceptions=True)
        try:
            await elector.resign()
            async with pool.connection() as conn:
                await conn.execute(self.app.queries["worker_deregister"], {"id": self.worker_id})
        except Exception as exc:
            logger.warning("could not deregister cleanly (%s); the leader forgets us later", exc)

    def _exit_for_memory(self, code: int) -> None:
        """Above the hard memory limit: shut down now, with no grace for running jobs."""
        self.exit_code = code
        self._grace = 0.0
        assert self._stop is not None
        self._stop.set()

    def _observe(self, adb: AsyncDatabase) -> None:
        """Metrics and error reporting subscribe to telemetry only when asked for, so a
        worker without them pays nothing per job."""
        from unbroken import integrations

        enabled = integrations.install()
        if self.settings.metrics_port:
            from unbroken import metrics

            metrics.install(port=self.settings.metrics_port, pools=adb.stats)
            enabled.append(f"metrics on 127.0.0.1:{self.settings.metrics_port}/metrics")
        if enabled:
            logger.info("observability: %s", ", ".join(enabled))

    async def _burst_watch(self, producer: Producer, pool: AsyncRolePool) -> None:
        """Stop once idle and nothing in our queues is available or due within burst_wait
        seconds: a retry after its backoff or a short delay is waited for, a job scheduled
        further out is not. The database is asked only while this process looks idle."""
        assert self.executor is not None
        assert self.completer is not None
        params = {
            "queues": self.settings.queue_list(),
            "worker_id": self.worker_id,
            "horizon": self.burst_wait,
        }
        waiting = False
        while True:
            await asyncio.sleep(0.05)
            idle = not self.executor.running and not len(self.completer)
            if not (idle and producer.last_fetch_empty and producer.fetches > 0):
                continue
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(self.app.queries["job_exists_due_soon"], params)
                    row = await cur.fetchone()
            except Exception as exc:  # the database is away: ask again, as the producer does
                logger.warning("burst mode: cannot look for jobs due soon (%s)", exc)
                await asyncio.sleep(1.0)
                continue
            if row is not None and row[0]:
                if not waiting:
                    logger.info(
                        "burst mode: waiting for jobs due within %s s", f"{self.burst_wait:g}"
                    )
                waiting = True
                await asyncio.sleep(0.2)
                continue
            logger.info("burst mode: no job due within %s s, stopping", f"{self.burst_wait:g}")
            assert self._stop is not None
            self._stop.set()
            return

    # --- signals -----------------------------------------------------------------------------
    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.warning(
                "%s: finishing running jobs (up to %.0f s); send it again to exit at once",
                sig.name,
                self.settings.shutdown_timeout,
            )
            assert self._stop is not None
            self._stop.set()
        else:
            logger.warning("%s again: exiting now; leases will return the running jobs", sig.name)
            os._exit(1)


def _merge(base: Settings, overrides: dict[str, Any]) -> Settings:
    if not overrides:
        return base
    if "queues" in overrides and not isinstance(overrides["queues"], str):
        overrides = {**overrides, "queues": ",".join(overrides["queues"])}
    try:
        return Settings(**{**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, overrides)) from None
