"""The memory guard: a worker's resident memory against its soft and hard limits.

Every `CHECK_SECONDS` it reads the process's RSS (`/proc/self/statm`: one small read; psutil
where there is no /proc and psutil is installed; with neither, the limits are off and the
worker says so once).

- Above `memory_soft_mb` the executor holds fetching: the producer claims nothing, so jobs
  stay available to other workers, while running jobs go on. Below it again, fetching
  resumes. Each crossing is logged once.
- Above `memory_hard_mb` the worker stops at once, without the shutdown grace: what still
  runs is handed back unspent (as at the end of a SIGTERM grace), buffered outcomes are
  written, and the process exits with `MEMORY_EXIT_CODE`, for a supervisor (or
  `unbroken worker --restart-on-memory`) to start a fresh one. Memory a Python process has
  grown into is rarely given back to the system: a new process is the way to get it back.

Every sample emits `worker.memory` (rss_mb, soft_mb, hard_mb, over: none, soft or hard).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Literal

from unbroken import telemetry
from unbroken.runtime.executor import Executor
from unbroken.settings import Settings

logger = logging.getLogger("unbroken.memory")
CHECK_SECONDS = 0.5
MEMORY_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; systemd: RestartForceExitStatus=75
Over = Literal["none", "soft", "hard"]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """This process's resident memory in bytes, or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


class MemoryGuard:
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        on_hard: Callable[[int], None],
        read: Callable[[], int | None] = rss_bytes,
    ) -> None:
        self._soft = settings.memory_soft_mb
        self._hard = settings.memory_hard_mb
        self._executor = executor
        self._on_hard = on_hard
        self._read = read
        self.over: Over = "none"

    @property
    def enabled(self) -> bool:
        return bool(self._soft or self._hard)

    async def run(self) -> None:
        if self._read() is None:
            logger.warning("memory limits are off: this system shows no process memory")
            return
        while True:
            if self.check() == "hard":
                return
            await asyncio.sleep(CHECK_SECONDS)

    def check(self) -> Over:
        """Sample once and act on it; returns where the sample stands."""
        rss = self._read()
        if rss is None:
            return self.over
        mb = rss / 2**20
        over: Over = "none"
        if self._hard and mb >= self._hard:
            over = "hard"
        elif self._soft and mb >= self._soft:
            over = "soft"
        telemetry.emit(
            "worker.memory", rss_mb=round(mb, 1), soft_mb=self._soft, hard_mb=self._hard, over=over
        )
        if over == self.over:
            return over
        self.over = over
        if over == "hard":
            logger.error(
                "memory %.0f MiB is above the hard limit (%d MiB): handing back %d running "
                "jobs and exiting with code %d to be restarted",
                mb,
                self._hard,
                len(self._executor.running),
                MEMORY_EXIT_CODE,
            )
            self._executor.hold_fetching(True)
            self._on_hard(MEMORY_EXIT_CODE)
        elif over == "soft":
            logger.warning(
                "memory %.0f MiB is above the soft limit (%d MiB): fetching no more jobs "
                "until it is below",
                mb,
                self._soft,
            )
            self._executor.hold_fetching(True)
        else:
            logger.info("memory %.0f MiB is below the soft limit again: fetching jobs", mb)
            self._executor.hold_fetching(False)
        return over
