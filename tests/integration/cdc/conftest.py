"""Fixtures of the CDC tests: `cdc_server` (a logical-decoding PostgreSQL apart from the
session's, started once) and `cdc_source` (a fresh database on it per test); tests/cdc_source.py
holds the logic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cdc_source import CdcServer, CdcSource


@pytest.fixture(scope="session")
def cdc_server() -> Iterator[CdcServer]:
    """A throwaway PostgreSQL with wal_level=logical for the whole session."""
    pg = CdcServer()
    try:
        yield pg.start()
    finally:
        pg.close()


@pytest.fixture
def cdc_source(cdc_server: CdcServer) -> Iterator[CdcSource]:
    """A fresh source database on the CDC server; its slots and itself dropped afterwards."""
    source = CdcSource(cdc_server)
    yield source
    source.close()
