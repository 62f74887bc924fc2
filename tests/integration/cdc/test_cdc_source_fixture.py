"""The CDC source fixture: a logical-decoding server apart from the session's."""

from __future__ import annotations

from cdc_source import CdcSource


def test_source_is_logical_and_survives_restart(cdc_source: CdcSource) -> None:
    assert cdc_source.value("SHOW wal_level") == "logical"
    cdc_source.execute("CREATE TABLE t (id int PRIMARY KEY)")
    cdc_source.execute("SELECT pg_create_logical_replication_slot('fixture_slot', 'pgoutput')")
    cdc_source.restart()
    assert cdc_source.value("SELECT count(*) FROM pg_replication_slots") >= 1
