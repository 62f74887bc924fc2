"""Fixtures and hooks only; the logic behind them lives in tests/pg.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from apps.harness import FAST_SETTINGS, Probe
from ops_seed import Seeded, seed
from pg import Faults, SessionPostgres
from unbroken import App

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs the database: mark it `integration`."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[SessionPostgres]:
    """A throwaway PostgreSQL for the whole session (TCP, free port, durability off)."""
    pg = SessionPostgres()
    try:
        yield pg.start()
    finally:
        pg.close()


@pytest.fixture
def database_url(pg_server: SessionPostgres) -> Iterator[str]:
    """A fresh database for this test only; dropped (WITH FORCE) afterwards."""
    url = pg_server.create_database()
    yield url
    pg_server.ensure_up()  # a test may have left the server stopped
    pg_server.drop_database(url)


@pytest.fixture
def faults(pg_server: SessionPostgres) -> Iterator[Faults]:
    """Restart, stop, or cut sessions of the session server; it is back up after the test."""
    handle = Faults(pg_server)
    yield handle
    handle.finish()


@pytest.fixture
def app(database_url: str) -> Iterator[App]:
    """An App on the test's database, migrated, with FAST_SETTINGS."""
    app = App(database_url=database_url, **FAST_SETTINGS)
    app.migrate()
    yield app
    app.close()


@pytest.fixture
def probe(database_url: str) -> Iterator[Probe]:
    """A connection to read the test's database from the outside."""
    probe = Probe(database_url)
    yield probe
    probe.close()


@pytest.fixture
def seeded(database_url: str) -> Seeded:
    """The operator tests' known job table (ops_seed), in the test's database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return seed(conn)
