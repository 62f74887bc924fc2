"""Tasks for tests that run real worker processes: `--app tests.apps.fault_app:app`.

Settings come from UNBROKEN_* variables (the test sets the database and short leases).
`record` and `record_sync` write one row per execution into `executions` (created by the
test in the same database) before they do anything else, so a test can tell which
process ran which attempt of which job, and how many times.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

import unbroken
from unbroken import current_job

app = unbroken.App()

# Quick retries: a task whose own database write fails during a server restart retries soon.
QUICK = unbroken.Retry(base=0.2, cap=1.0, multiplier=2.0, jitter=0.5)
RECORD = (
    "WITH earlier AS (SELECT count(*) AS n FROM executions WHERE job_id = %(job)s) "
    "INSERT INTO executions (job_id, attempt, pid, worker_id) "
    "VALUES (%(job)s, %(attempt)s, %(pid)s, %(worker)s) RETURNING (SELECT n FROM earlier)"
)
_pool: AsyncConnectionPool[Any] | None = None


def _url() -> str:
    url = app.settings.configured_url()
    assert url, "fault_app needs UNBROKEN_DATABASE_URL"
    return url


async def _executions_pool() -> AsyncConnectionPool[Any]:
    global _pool
    if _pool is None:
        _pool = AsyncConnectionPool(
            _url(),
            min_size=0,
            max_size=4,
            open=False,
            timeout=20,
            kwargs={"autocommit": True, "application_name": "fault_app"},
            check=AsyncConnectionPool.check_connection,
        )
        await _pool.open()
    return _pool


def _params() -> dict[str, Any]:
    job = current_job()
    return {"job": job.job_id, "attempt": job.attempt, "pid": os.getpid(), "worker": job.worker_id}


def _answer() -> dict[str, Any]:
    job = current_job()
    return {"pid": os.getpid(), "attempt": job.attempt, "worker": job.worker_id}


@app.task(name="record", retry=QUICK)
async def record(seconds: float = 0.0, once: bool = False) -> dict[str, Any]:
    """Record this execution, then sleep `seconds` (only on the job's first execution if
    `once`: a rescued or handed-back job then finishes at once)."""
    pool = await _executions_pool()
    async with pool.connection() as conn:
        cur = await conn.execute(RECORD, _params())
        row = await cur.fetchone()
    earlier = row[0] if row else 0
    if seconds and not (once and earlier):
        await asyncio.sleep(seconds)
    return _answer()


@app.task(name="fail", max_attempts=2, retry=unbroken.Retry(base=0.1, cap=0.1, jitter=0))
def fail(message: str) -> None:
    """Fail every attempt: one retry, then dead (for the tests of the worker's job lines)."""
    raise ValueError(message)


@app.task(name="fail_once", retry=unbroken.Retry(base=1.0, cap=1.0, jitter=0))
def fail_once() -> None:
    """Fail the first attempt; its retry is due a second later and succeeds."""
    if current_job().attempt == 1:
        raise ValueError("the first attempt fails")


@app.task(name="record_sync", retry=QUICK)
def record_sync(seconds: float = 0.0, once: bool = False) -> dict[str, Any]:
    """`record` as a sync task, run in the worker's threads (sleeps with time.sleep)."""
    with psycopg.connect(_url(), autocommit=True) as conn:
        row = conn.execute(RECORD, _params()).fetchone()
    earlier = row[0] if row else 0
    if seconds and not (once and earlier):
        time.sleep(seconds)
    return _answer()
