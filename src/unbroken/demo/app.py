"""The demo's tasks: two chunked syncs into a sink schema, each chunk committed with its
checkpoint, so a restart, a killed worker or a lost connection costs at most one chunk
of work and never writes a record twice.
"""

from __future__ import annotations

import unbroken
from unbroken import AsyncChunk, arun_chunks
from unbroken.demo.jira import Changelog, Issue, JiraAPI

app = unbroken.App()
SINK_SCHEMA = "jira_demo"

SINK_DDL = f"""
DROP SCHEMA IF EXISTS {SINK_SCHEMA} CASCADE;
CREATE SCHEMA {SINK_SCHEMA};
CREATE TABLE {SINK_SCHEMA}.issues (
    id      integer PRIMARY KEY,
    key     text NOT NULL,
    summary text NOT NULL,
    status  text NOT NULL,
    writes  integer NOT NULL DEFAULT 1  -- how often this record was written: must stay 1
);
CREATE TABLE {SINK_SCHEMA}.changelogs (
    id         integer PRIMARY KEY,  -- COPY would fail on a second write of a record
    issue_id   integer NOT NULL,
    field      text NOT NULL,
    from_value text NOT NULL,
    to_value   text NOT NULL
);
"""

UPSERT_ISSUES = f"""
INSERT INTO {SINK_SCHEMA}.issues (id, key, summary, status)
SELECT * FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[])
ON CONFLICT (id) DO UPDATE
SET summary = excluded.summary, status = excluded.status,
    writes = {SINK_SCHEMA}.issues.writes + 1
""".encode()


@app.task(queue="etl", max_attempts=10, retry=unbroken.Retry(base=0.5, cap=5), chunk_size=1000)
async def sync_issues(project: str) -> dict[str, int]:
    api = JiraAPI()

    async def write(chunk: AsyncChunk[Issue]) -> None:
        items = chunk.items
        await chunk.conn.execute(
            UPSERT_ISSUES,
            [
                [i.id for i in items],
                [i.key for i in items],
                [i.summary for i in items],
                [i.status for i in items],
            ],
        )

    progress = await arun_chunks(api.issues, write)
    return {"issues": progress.processed, "pages_read_this_attempt": api.pages_served}


@app.task(queue="etl", max_attempts=10, retry=unbroken.Retry(base=0.5, cap=5), chunk_size=1500)
async def sync_changelogs(project: str) -> dict[str, int]:
    api = JiraAPI()

    async def write(chunk: AsyncChunk[Changelog]) -> None:
        rows = [(c.id, c.issue_id, c.field, c.from_value, c.to_value) for c in chunk.items]
        await chunk.copy(
            f"{SINK_SCHEMA}.changelogs",
            ["id", "issue_id", "field", "from_value", "to_value"],
            rows,
        )

    progress = await arun_chunks(api.changelogs, write)
    return {"changelogs": progress.processed, "pages_read_this_attempt": api.pages_served}
