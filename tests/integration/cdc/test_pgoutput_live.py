"""The pgoutput decoder on a live slot: replaying the decoded changes rebuilds the source table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from cdc_source import CdcSource
from unbroken.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    RowLoader,
    Update,
    decode,
    lsn_from_str,
    lsn_to_str,
)

PEEK = (
    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
    " 'proto_version', '1', 'publication_names', 'live_pub', 'messages', 'true')"
)


@pytest.fixture
def source(cdc_source: CdcSource) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cdc_source.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE live (id bigint PRIMARY KEY, name text, score numeric,"
            " at timestamptz, tags text[], doc jsonb, big text)"
        )
        conn.execute("CREATE PUBLICATION live_pub FOR TABLE live")
        conn.execute("SELECT pg_create_logical_replication_slot('live_slot', 'pgoutput')")
        yield conn  # cdc_source drops the slot with the database


def replay(conn: psycopg.Connection[Any]) -> tuple[dict[Any, dict[str, Any]], int, int]:
    """Apply every change in the slot (peeked, not consumed) to a dict by key; also count
    the transactions and the unchanged TOASTed values seen."""
    rows: dict[Any, dict[str, Any]] = {}
    loaders: dict[int, RowLoader] = {}
    transactions = unchanged = 0
    open_txn = False
    for _, data in conn.execute(PEEK, ["live_slot"]).fetchall():
        message = decode(bytes(data))
        if isinstance(message, Begin):
            assert not open_txn
            open_txn = True
        elif isinstance(message, Commit):
            assert open_txn
            open_txn, transactions = False, transactions + 1
        elif isinstance(message, Relation):
            loaders[message.oid] = RowLoader(message, conn)
        elif isinstance(message, Insert):
            row = loaders[message.relation_oid].load(message.new)
            rows[row["id"]] = row
        elif isinstance(message, Update):
            loader = loaders[message.relation_oid]
            new = loader.load(message.new)
            unchanged += message.new.count(UNCHANGED)
            before = rows.pop(loader.load(message.key)["id"] if message.key else new["id"])
            rows[new["id"]] = {k: before[k] if v is UNCHANGED else v for k, v in new.items()}
        elif isinstance(message, Delete):
            assert message.key is not None
            del rows[loaders[message.relation_oid].load(message.key)["id"]]
    assert not open_txn
    return rows, transactions, unchanged


def test_decoded_changes_rebuild_the_source_table(source: psycopg.Connection[Any]) -> None:
    source.execute(
        "INSERT INTO live SELECT g, 'name ' || g, g * 1.5, now() - g * interval '1 minute',"
        " ARRAY['a', 'b,c', NULL], jsonb_build_object('g', g, 'q', 'x\"y'), NULL"
        " FROM generate_series(1, 2000) g"
    )
    source.execute(
        "UPDATE live SET big = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)"
        " WHERE id <= 10"
    )
    source.execute("UPDATE live SET name = 'renamed' WHERE id <= 5")  # big stays: 'u'
    source.execute("UPDATE live SET id = id + 100000 WHERE id % 7 = 0")  # key changes: 'K'
    source.execute("DELETE FROM live WHERE id % 5 = 0")
    source.execute("UPDATE live SET name = NULL, score = NULL WHERE id % 3 = 0")
    for i in range(20):
        source.execute("INSERT INTO live (id, name) VALUES (%s, 'one by one')", [500000 + i])
    rows, transactions, unchanged = replay(source)
    source_rows = {
        row["id"]: row
        for row in source.cursor(row_factory=dict_row).execute("SELECT * FROM live").fetchall()
    }
    assert transactions == 6 + 20
    assert unchanged == 5 + 1 + 3  # ids 1-5 renamed, 7 re-keyed, 3, 6 and 9 nulled
    assert len(rows) == len(source_rows) > 1000
    assert rows == source_rows


def test_lsn_text_agrees_with_the_server(source: psycopg.Connection[Any]) -> None:
    source.execute("INSERT INTO live (id) VALUES (1)")
    for lsn_text, data in source.execute(PEEK, ["live_slot"]).fetchall():
        lsn = lsn_from_str(lsn_text)
        assert lsn_to_str(lsn) == lsn_text
        message = decode(bytes(data))
        if isinstance(message, Commit):
            row = source.execute(
                "SELECT %s::pg_lsn - '0/0'::pg_lsn, %s::pg_lsn::text",
                [lsn_to_str(message.end_lsn), lsn_to_str(message.commit_lsn)],
            ).fetchone()
            assert row == (message.end_lsn, lsn_to_str(message.commit_lsn))
