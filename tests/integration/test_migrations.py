"""Migrations: they produce exactly schema.sql, run once, and are safe in parallel."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from unbroken import migrations


def dump_schema(pg_server: Any, url: str, schema: str) -> str:
    pg_dump = pg_server.server.binaries.bin_dir / "pg_dump"
    out = subprocess.run(
        [str(pg_dump), "--schema-only", "--no-owner", "--no-privileges", "-n", schema, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Comments, blank lines and pg_dump's session settings say nothing about the schema.
    lines = [
        line
        for line in out.splitlines()
        if line.strip()
        and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config"))
        and not line.startswith("\\")  # \restrict / \unrestrict tokens differ per dump
    ]
    return "\n".join(lines)


def versions(url: str, schema: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT version, name FROM {schema}.migrations ORDER BY 1").fetchall()


@pytest.mark.parametrize("schema", ["unbroken", "tenant_b"])
def test_migrations_produce_exactly_schema_sql(pg_server: Any, schema: str) -> None:
    by_migrations = pg_server.create_database()
    by_schema_sql = pg_server.create_database()
    try:
        with psycopg.connect(by_migrations, autocommit=True) as conn:
            applied = migrations.migrate(conn, schema)
        assert [m.version for m in applied] == [m.version for m in migrations.available()]
        with psycopg.connect(by_schema_sql, autocommit=True) as conn:
            conn.execute(migrations.full_schema_sql(schema).encode())
        assert dump_schema(pg_server, by_migrations, schema) == dump_schema(
            pg_server, by_schema_sql, schema
        )
        assert versions(by_migrations, schema) == versions(by_schema_sql, schema)
    finally:
        pg_server.drop_database(by_migrations)
        pg_server.drop_database(by_schema_sql)


def test_migrate_twice_applies_nothing_the_second_time(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert migrations.migrate(conn)
        assert migrations.migrate(conn) == []
        assert migrations.pending(conn, "unbroken") == []


def test_schema_sql_does_not_mix_with_the_users_tables(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.jobs (id int)")  # the user's own "jobs"
        migrations.migrate(conn)
        tables = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'jobs'"
        ).fetchall()
    assert sorted(tables) == [("public",), ("unbroken",)]


def test_concurrent_migrations_from_separate_processes_are_safe(database_url: str) -> None:
    script = (
        "import sys, psycopg\n"
        "from unbroken import migrations\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c:\n"
        "    print(len(migrations.migrate(c)))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    total = len(migrations.available())
    assert sorted(outputs) == ["0"] * 3 + [str(total)]  # exactly one process did the work
    assert len(versions(database_url, "unbroken")) == total


def test_cli_prints_the_schema_for_other_tools() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "unbroken", "db", "sql", "--schema", "app_jobs"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CREATE TABLE app_jobs.jobs" in out
    assert not re.search(r"\bunbroken\.", out)
