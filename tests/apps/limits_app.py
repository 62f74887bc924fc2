"""Tasks for the flow-control tests' worker processes: `--app tests.apps.limits_app:app`.

`hold` writes a row into `flow_runs` when it starts and stamps it when it ends (the
database's clock both times), so a test can tell how many jobs of a key ran at once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

import unbroken
from unbroken import current_job

app = unbroken.App()
app.limit("cust", concurrency=2)
app.limit("api", rate=3, per=1.0)

RUNS_DDL = (
    "CREATE TABLE IF NOT EXISTS flow_runs (id bigserial PRIMARY KEY, job_id bigint NOT NULL,"
    " key text, pid integer NOT NULL, started_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " ended_at timestamptz)"
)
QUICK = unbroken.Retry(base=0.2, cap=1.0, multiplier=2.0, jitter=0.5)


async def _write(sql: str, params: dict[str, Any]) -> Any:
    url = app.settings.configured_url()
    assert url, "limits_app needs UNBROKEN_DATABASE_URL"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(sql.encode(), params)
        return await cur.fetchone() if cur.description else None


@app.task(name="hold", limit_key=lambda key, **_: key, retry=QUICK)
async def hold(key: str, seconds: float = 0.2, once: bool = False) -> None:
    """Record the run, sleep `seconds` (if `once`, only on the job's first run), stamp its end."""
    job = current_job()
    row = await _write(
        "INSERT INTO flow_runs (job_id, key, pid) VALUES (%(job)s, %(key)s, %(pid)s)"
        " RETURNING id, (SELECT count(*) FROM flow_runs WHERE job_id = %(job)s)",
        {"job": job.job_id, "key": key, "pid": os.getpid()},
    )
    if seconds and not (once and row[1] > 0):
        await asyncio.sleep(seconds)
    # The end is stamped even across a server restart (a run left without an end would count
    # as running forever). Stamped when the server is back, it is still before the outcome
    # that frees the key's slot: the outcome is written after this returns.
    for _ in range(300):
        try:
            await _write(
                "UPDATE flow_runs SET ended_at = clock_timestamp() WHERE id = %(id)s",
                {"id": row[0]},
            )
            return
        except psycopg.OperationalError:
            await asyncio.sleep(0.1)


@app.task(name="plain")
async def plain(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
