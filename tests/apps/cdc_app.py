"""A CDC pipeline task for tests that run real worker processes: `--app tests.apps.cdc_app:app`.

`cdc_events` streams the source's `events` table (id only) into `events_log`, a plain
append-only table (no key): a change applied twice shows as two rows. `pause` seconds of
sleep inside each chunk's transaction give a test the time to kill the worker mid-chunk.
"""

from __future__ import annotations

import time

import unbroken
from unbroken import current_job
from unbroken.cdc import Change, Pipeline, run_pipeline
from unbroken.chunks import Chunk

app = unbroken.App()
TASK = "cdc_events"

SINK_SQL = """
CREATE TABLE events_log (
    n       bigserial PRIMARY KEY,
    op      text NOT NULL,
    id      integer,
    lsn     bigint NOT NULL,
    attempt integer NOT NULL
);
"""


@app.task(name=TASK, max_attempts=5, retry=unbroken.Retry(base=0.2, cap=1.0))
def cdc_events(source_url: str, pause: float = 0.0, chunk_size: int = 50) -> None:
    pipeline = Pipeline(name="events", source_url=source_url, tables=["events"], snapshot=False)
    attempt = current_job().attempt

    def write(chunk: Chunk[Change]) -> None:
        with chunk.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events_log (op, id, lsn, attempt) VALUES (%s, %s, %s, %s)",
                [(c.op, (c.key or {}).get("id"), c.lsn, attempt) for c in chunk.items],
            )
        time.sleep(pause)  # a slow sink: the kill lands inside a chunk's transaction

    run_pipeline(pipeline, write, chunk_size=chunk_size)
