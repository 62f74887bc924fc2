"""Tasks for the workflow tests that run real worker processes:
`--app tests.apps.workflow_app:app`.

`step(n)` records every run it starts in `wf_runs` (job, attempt, pid and the upstream
jobs it was given, as the claim returned them), works a little so a SIGKILL can land
mid-run, and returns `n`: its dependents' upstream results name their upstream steps.
"""

from __future__ import annotations

import json
import os
import time

import psycopg

import unbroken
from unbroken import current_job

app = unbroken.App()

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS public.wf_runs (
    id       bigserial PRIMARY KEY,
    job_id   bigint NOT NULL,
    step     integer NOT NULL,
    attempt  integer NOT NULL,
    pid      integer NOT NULL,
    upstream jsonb NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


@app.task(name="workflow_app.step", retry=unbroken.Retry(base=0.2, cap=1.0))
def step(n: int, work: float = 0.3) -> int:
    job = current_job()
    upstream = [{"state": u.state, "result": u.result} for u in job.upstream]
    url = app.settings.configured_url()
    assert url, "workflow_app needs UNBROKEN_DATABASE_URL"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.wf_runs (job_id, step, attempt, pid, upstream)"
            " VALUES (%s, %s, %s, %s, %s)",
            [job.job_id, n, job.attempt, os.getpid(), json.dumps(upstream)],
        )
    time.sleep(work)
    return n
