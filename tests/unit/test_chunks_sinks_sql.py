"""The statements the chunk sinks compose, and reading progress back (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from unbroken.chunks.progress import Progress
from unbroken.chunks.sinks import copy_statement, upsert_statements


def test_copy_quotes_every_name() -> None:
    statement = copy_statement("etl.Issues", ["id", "Title"]).as_string(None)
    assert statement == 'COPY "etl"."Issues" ("id", "Title") FROM STDIN'


def test_upsert_loads_a_temporary_table_and_merges_the_last_row_per_key() -> None:
    create, copy, merge = (
        s.as_string(None) for s in upsert_statements("issues", ["id", "a", "b"], ["id"], None, "t1")
    )
    assert create == (
        'CREATE TEMPORARY TABLE "t1" ON COMMIT DROP AS SELECT "id", "a", "b", '
        '0::bigint AS unbroken_seq FROM "issues" WITH NO DATA'
    )
    assert copy == 'COPY "t1" ("id", "a", "b", unbroken_seq) FROM STDIN'
    assert merge == (
        'INSERT INTO "issues" ("id", "a", "b") SELECT DISTINCT ON ("id") "id", "a", "b" '
        'FROM "t1" ORDER BY "id", unbroken_seq DESC '
        'ON CONFLICT ("id") DO UPDATE SET "a" = EXCLUDED."a", "b" = EXCLUDED."b"'
    )


def test_upsert_update_list_and_do_nothing() -> None:
    _, _, only_b = upsert_statements("t", ["k1", "k2", "a", "b"], ["k1", "k2"], ["b"], "x")
    assert only_b.as_string(None).endswith(
        'ON CONFLICT ("k1", "k2") DO UPDATE SET "b" = EXCLUDED."b"'
    )
    _, _, nothing = upsert_statements("t", ["k", "a"], ["k"], [], "x")
    assert nothing.as_string(None).endswith('ON CONFLICT ("k") DO NOTHING')


@pytest.mark.parametrize(
    ("columns", "key", "update", "message"),
    [
        (["a"], [], None, "non-empty"),
        (["a"], ["b"], None, "among the columns"),
        (["a", "b"], ["a"], ["c"], "update columns"),
        ([], ["a"], None, "among the columns"),
    ],
)
def test_upsert_refuses_inconsistent_columns(
    columns: list[str], key: list[str], update: list[str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        upsert_statements("t", columns, key, update, "x")


def test_progress_from_stored_json() -> None:
    empty = Progress.from_json(3, None)
    assert (empty.position, empty.total, empty.fraction, empty.done) == (0, None, None, False)
    p = Progress.from_json(
        3,
        {
            "position": 50,
            "processed": 45,
            "failed": 5,
            "total": 200,
            "chunks": 5,
            "rate": 12.5,
            "eta_seconds": 12.0,
            "checkpoint_at": "2030-01-02T03:04:05.123456+00:00",
            "errors": [{"position": 1, "error": "ValueError: x"}],
        },
        checkpoint={"after": 50},
        checkpoint_age=1.5,
    )
    assert p.fraction == 0.25
    assert p.checkpoint_at == datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert (p.processed, p.failed, p.rate, p.checkpoint, p.checkpoint_age) == (
        45,
        5,
        12.5,
        {"after": 50},
        1.5,
    )
    assert p.errors == [{"position": 1, "error": "ValueError: x"}]
