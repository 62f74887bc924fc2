"""CDC pipeline rows as a pipeline's worker writes them, for the CLI and dashboard tests."""

from __future__ import annotations

import json
from typing import Any

import psycopg

PIPELINE_COLUMNS = (
    "name", "slot_name", "publication", "source", "system_identifier", "database", "tables",
    "position", "state", "last_error", "lag_bytes", "lag_seconds", "retained_wal_bytes", "changes",
)  # fmt: skip


def add_pipeline(url: str, name: str, **columns: Any) -> None:
    """One cdc_pipelines row (defaults: streaming, some lag) in the unbroken database `url`."""
    row: dict[str, Any] = {
        "name": name,
        "slot_name": f"unbroken_{name}",
        "publication": f"unbroken_{name}",
        "source": "postgresql://app@source.example:5432/shop",
        "system_identifier": None,
        "database": None,
        "tables": ["public.orders"],
        "position": "0/16B3748",
        "state": "streaming",
        "last_error": None,
        "lag_bytes": 1536,
        "lag_seconds": 3.0,
        "retained_wal_bytes": 5 * 1024 * 1024,
        "changes": 12345,
        **columns,
    }
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO unbroken.cdc_pipelines (name, slot_name, publication, source,"
            " system_identifier, database, tables, position, state, last_error, lag_bytes,"
            " lag_seconds, retained_wal_bytes, changes) VALUES (%(name)s, %(slot_name)s,"
            " %(publication)s, %(source)s, %(system_identifier)s, %(database)s, %(tables)s,"
            " %(position)s::pg_lsn, %(state)s, %(last_error)s, %(lag_bytes)s, %(lag_seconds)s,"
            " %(retained_wal_bytes)s, %(changes)s)",
            row,
        )


def add_dead_letter(url: str, pipeline: str, error: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO unbroken.cdc_dead_letters (pipeline, lsn, relation, change, error)"
            " VALUES (%s, '0/16B3700', 'public.orders', %s, %s)",
            [pipeline, json.dumps({"id": 7}), error],
        )


def add_schema_change(url: str, pipeline: str, before: Any, after: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO unbroken.cdc_schema_changes (pipeline, relation, lsn, before, after)"
            " VALUES (%s, 'public.orders', '0/16B3720', %s, %s)",
            [pipeline, json.dumps(before), json.dumps(after)],
        )
