"""The CDC demo's task: stream the demo source's `orders` into a sink table of the same shape.

`unbroken demo --cdc` enqueues it and runs a worker; it streams (snapshot first, then the
changes) until the demo cancels it. Each chunk's rows commit with the pipeline's position,
and the slot is advanced only after that commit (unbroken.cdc.pipeline).
"""

from __future__ import annotations

import unbroken
from unbroken.cdc import Change, Pipeline, mirror, run_pipeline
from unbroken.chunks import Chunk

app = unbroken.App()
PIPELINE = "cdc_demo"
SOURCE_DATABASE = "unbroken_cdc_demo"  # the demo's source, on the same server as unbroken's
SOURCE_TABLE = "public.orders"
SINK_SCHEMA = "cdc_demo"
SINK_TABLE = f"{SINK_SCHEMA}.orders"
ORDERS = """
CREATE TABLE {table} (
    id         bigint PRIMARY KEY,
    customer   text NOT NULL,
    amount     numeric(10, 2) NOT NULL,
    status     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


@app.task(queue="cdc", max_attempts=10, retry=unbroken.Retry(base=0.5, cap=5), chunk_size=500)
def stream_orders(source_url: str) -> dict[str, int]:
    pipeline = Pipeline(
        name=PIPELINE, source_url=source_url, tables=[SOURCE_TABLE], poll_interval=0.2
    )

    def write(chunk: Chunk[Change]) -> None:
        mirror(chunk, {SOURCE_TABLE: SINK_TABLE})

    progress = run_pipeline(pipeline, write, until="cancelled")
    return {"changes": progress.processed}
