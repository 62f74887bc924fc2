"""Tasks for the in-job API and memory-limit tests that run real worker processes:
`--app tests.apps.jobapi_app:app`. Settings come from UNBROKEN_* variables.

The tasks wait for files the test creates (a gate), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import unbroken
from unbroken import current_job

app = unbroken.App()
_held: list[bytes] = []  # memory a task grew into: kept until the process ends


async def _wait_for(gate: str) -> None:
    while not os.path.exists(gate):  # noqa: ASYNC240 (a stat, on a local file)
        current_job().check()
        await asyncio.sleep(0.02)


@app.task(name="report_then_wait")
async def report_then_wait(done: int, total: int, gate: str) -> dict[str, Any]:
    """Report `done` of `total`, then wait for `gate` to exist. A later attempt that finds
    a report left by an earlier one returns what it found at once."""
    ctx = current_job()
    seen = ctx.last_progress
    if seen is not None:
        return {"resumed_from": seen.done, "total": seen.total, "message": seen.message}
    ctx.progress(done=done, total=total, message=f"pid {os.getpid()}")
    await _wait_for(gate)
    return {"resumed_from": None}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _grow_to(mb: float) -> None:
    while _rss_mb() < mb:
        _held.append(b"\x01" * (8 * 2**20))  # bytes filled in: pages really touched
        await asyncio.sleep(0.01)


@app.task(name="grow")
async def grow(soft_mb: float, hard_mb: float, gate: str) -> str:
    """Grow past `soft_mb`, wait for `gate`, then grow past `hard_mb` and wait to be
    stopped. The attempt after a hand-back finds its progress message and returns."""
    ctx = current_job()
    if ctx.last_progress is not None and ctx.last_progress.message == "past hard":
        return "survived"
    await _grow_to(soft_mb)
    ctx.progress(message="past soft")
    await _wait_for(gate)
    ctx.progress(message="past hard")
    await _grow_to(hard_mb)
    await asyncio.Event().wait()  # until the worker hands the job back


@app.task(name="quick")
def quick() -> int:
    return os.getpid()
