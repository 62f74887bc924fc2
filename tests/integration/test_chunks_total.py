"""Issue 11 on a real server: rows committed before its fix resume without writing twice,
and no job's progress can say more items were consumed than its source holds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from chunks_support import sync_env
from unbroken import Chunk, Page, migrations, run_chunks


def write(chunk: Chunk[int]) -> None:
    chunk.copy("sink", ["id", "note"], [(i, "x") for i in chunk.items])


def test_a_row_left_at_checkpoint_none_by_the_old_runner_resumes_without_writing(
    database_url: str,
) -> None:
    """The state issue 11 left behind: a chunk ended with the last page, whose cursor was
    None, and committed checkpoint None with done=false. Resumed now, the run reads the
    source from its start, skips all 1000 items done, and writes none of them again."""
    opened: list[Any] = []

    def pages(cursor: int | None) -> Iterator[Page[int]]:
        opened.append(cursor)
        for start in range(cursor or 0, 1000, 50):
            yield Page(list(range(start, start + 50)), start + 50 if start < 950 else None, 1000)

    with sync_env(database_url) as env:
        env.sql("INSERT INTO sink SELECT g, 'x' FROM generate_series(0, 999) AS g")
        old = {"run": "main", "seq": 4, "position": 1000, "processed": 1000, "chunks": 4}
        old |= {"total": 1000, "page_skip": 0, "done": False, "finished": {}}
        env.sql(
            "UPDATE unbroken.jobs SET checkpoint = NULL, progress = %s WHERE id = %s",
            [Jsonb(old), env.job_id],
        )
        done = run_chunks(pages, write, chunk_size=250)

    assert opened == [None]
    assert env.ids() == list(range(1000))  # each once
    assert (done.position, done.total, done.done, done.chunks) == (1000, 1000, True, 4)


def test_the_database_refuses_a_position_beyond_the_total(database_url: str) -> None:
    with sync_env(database_url) as env:
        for fine in ({"position": 5, "total": 5}, {"position": 5}, {"position": 5, "total": None}):
            env.sql(
                "UPDATE unbroken.jobs SET progress = %s WHERE id = %s", [Jsonb(fine), env.job_id]
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_progress_within_total"):
            env.sql(
                "UPDATE unbroken.jobs SET progress = %s WHERE id = %s",
                [Jsonb({"position": 2000, "total": 1000}), env.job_id],
            )


def test_migration_0003_raises_old_totals_to_their_position(database_url: str) -> None:
    """A database migrated before 0003, holding the progress issue 11 left (position 2000
    of total 1000): 0003 raises that total to 2000 and then adds the CHECK."""
    before = [m for m in migrations.available() if m.version < 3]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA unbroken")  # as migrate() does first (_ensure_schema)
        conn.execute(migrations._bootstrap("unbroken").encode())
        for m in before:
            conn.execute(m.sql("unbroken").encode())
            conn.execute(
                "INSERT INTO unbroken.migrations (version, name) VALUES (%s, %s)",
                [m.version, m.name],
            )
        progress = [
            {"position": 2000, "total": 1000, "done": True},
            {"position": 10, "total": 1000, "done": False},
            {"position": 10},
        ]
        for p in progress:
            conn.execute(
                "INSERT INTO unbroken.jobs (task, progress) VALUES ('etl', %s)", [Jsonb(p)]
            )
        applied = migrations.migrate(conn)
        assert 3 in [m.version for m in applied]
        rows = conn.execute("SELECT progress FROM unbroken.jobs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [
        {"position": 2000, "total": 2000, "done": True},
        *progress[1:],
    ]
