"""Fixtures of the tests that run real worker processes (tests/apps/fault_app.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from apps.harness import Probe, StartWorker, worker_processes
from unbroken import migrations


@pytest.fixture
def probe(database_url: str) -> Iterator[Probe]:
    """The test's view of a migrated database with the `executions` table the tasks fill."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
    probe = Probe(database_url)
    probe.create_executions()
    yield probe
    probe.close()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Starts worker processes of fault_app; every one is killed at the end of the test."""
    with worker_processes(database_url, tmp_path) as start:
        yield start
