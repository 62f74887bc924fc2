"""docs/cdc.md's quick start (block cdc_quickstart.py), run as written by a real worker
against a logical-decoding source: the docs test cannot, its database is not logical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from apps.harness import Probe, insert_jobs
from cdc_source import CdcSource
from docs_blocks import REPO, blocks
from unbroken import migrations

BIN = Path(sys.executable).parent


def test_the_quick_start_mirrors_the_source(
    database_url: str, cdc_source: CdcSource, tmp_path: Path
) -> None:
    [block] = [b for b in blocks(REPO / "docs/cdc.md") if "cdc_quickstart.py" in b.note]
    (tmp_path / block.file_name).write_text(block.code)
    cdc_source.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL)")
    cdc_source.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 50) AS g")
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute("CREATE TABLE orders_copy (id int PRIMARY KEY, total numeric NOT NULL)")
    probe = Probe(database_url)
    try:
        insert_jobs(probe, "cdc_quickstart.sync_orders")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UNBROKEN_", "PG"))}
        env |= {
            "UNBROKEN_DATABASE_URL": database_url,
            "SOURCE_URL": cdc_source.url,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO / "src")]),
        }
        worker = [str(BIN / "unbroken"), "worker", "--app", "cdc_quickstart:app", "--burst"]
        done = subprocess.run(
            worker, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert probe.value("SELECT state::text FROM unbroken.jobs") == "succeeded"
        sink = probe.rows("SELECT id, total FROM orders_copy ORDER BY id")
        assert [(r["id"], r["total"]) for r in sink] == cdc_source.execute(
            "SELECT id, total FROM orders ORDER BY id"
        )
    finally:
        probe.close()
