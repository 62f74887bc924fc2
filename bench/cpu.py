"""Where the CPU went during a run: the server, the workers, and everyone else.

The machine is shared (2 cores): other people's test runs take CPU from a benchmark at
random. Around each run we read the machine's busy time (/proc/stat), the PostgreSQL
server's (the postmaster and its backends, live or already exited: an exited backend's time
is added to the postmaster's children time when it is reaped), our own process's, and the
workers' (os.wait4). What is left is other people's load: a run with much of it is noise.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces: split after its closing parenthesis
    return text[text.rindex(")") + 2 :].split()


def machine_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) of all cores since boot; steal counts as busy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / TICK, total / TICK


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds of a PostgreSQL server so far: postmaster, live and reaped children."""
    if postmaster is None:
        return 0.0
    own = _stat_fields(postmaster)
    if own is None:
        return 0.0
    # fields after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    seconds = sum(int(own[i]) for i in (11, 12, 13, 14)) / TICK
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[1] == str(postmaster):
            seconds += (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuWindow:
    """CPU use between start() and stop(), in seconds; `workers` is added by the caller."""

    postmaster: int | None
    busy: float = 0.0
    wall: float = 0.0
    server: float = 0.0
    bench: float = 0.0
    workers: float = 0.0
    _start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def start(self) -> CpuWindow:
        busy, total = machine_busy()
        self._start = (busy, total, server_cpu(self.postmaster), self_cpu())
        return self

    def stop(self) -> CpuWindow:
        busy, total = machine_busy()
        b0, t0, s0, m0 = self._start
        cores = os.cpu_count() or 1
        self.busy = busy - b0
        self.wall = (total - t0) / cores
        self.server = server_cpu(self.postmaster) - s0
        self.bench = self_cpu() - m0
        return self

    @property
    def others(self) -> float:
        """CPU seconds used by processes that are not part of this benchmark."""
        return max(0.0, self.busy - self.server - self.bench - self.workers)

    def percent(self, seconds: float) -> float:
        """seconds as a percentage of one core over the window."""
        return seconds / self.wall * 100 if self.wall > 0 else float("nan")

    def as_json(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall, 3),
            "server_cpu_pct": round(self.percent(self.server), 1),
            "workers_cpu_pct": round(self.percent(self.workers), 1),
            "bench_cpu_pct": round(self.percent(self.bench), 1),
            "others_cpu_pct": round(self.percent(self.others), 1),
        }


@dataclass
class QuietPolicy:
    """How hard to look for a quiet machine (set from `python -m bench.run` flags).

    Before each measured run we wait (up to `wait` seconds, and up to `budget` seconds over
    the whole benchmark) until other processes use less than `threshold` % of one core; a
    run during which they used more is measured again (up to `attempts` times in all) and
    the quietest one is kept. Runs still noisy are marked with '!' in the tables.
    """

    threshold: float = 25.0
    wait: float = 30.0
    budget: float = 600.0
    attempts: int = 2
    waited: float = 0.0  # seconds spent waiting so far


QUIET = QuietPolicy()


def others_now(window: float = 0.5) -> float:
    """CPU % (of one core) the machine spends over `window` seconds while we sit idle."""
    b0, _ = machine_busy()
    time.sleep(window)
    b1, _ = machine_busy()
    return (b1 - b0) / window * 100


def wait_for_quiet(policy: QuietPolicy = QUIET) -> float:
    """Wait until other processes are quiet (within the policy's patience); their last CPU %."""
    started = time.monotonic()
    deadline = started + min(policy.wait, max(0.0, policy.budget - policy.waited))
    try:
        while True:
            load = others_now()
            if load < policy.threshold or time.monotonic() > deadline:
                return load
            time.sleep(0.5)
    finally:
        policy.waited += time.monotonic() - started


def quietest(run: Callable[[], T], others: Callable[[T], float], policy: QuietPolicy = QUIET) -> T:
    """`run()` again while others used too much CPU during it; the quietest result.

    `run` itself should call `wait_for_quiet()` just before the part that is measured.
    """
    best: T | None = None
    for _ in range(max(1, policy.attempts)):
        result = run()
        if best is None or others(result) < others(best):
            best = result
        if others(result) < policy.threshold:
            break
    assert best is not None
    return best
