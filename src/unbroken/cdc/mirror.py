"""`mirror`: apply a chunk's changes to sink tables that mirror the source tables.

    run_pipeline(pipeline, lambda chunk: mirror(chunk, {"public.orders": "orders_copy"}))

Each sink table has the source table's columns (or a subset holding its key) and the same
primary key. Inserts, updates and snapshot rows are upserts (an update's unchanged TOASTed
columns are left as they are; one that changed the key deletes the old key first), deletes
and truncates delete, and a backfill's `snapshot_range` deletes the rows of its key range
that the source no longer has, so after a re-snapshot the sink equals the source.

Table and column names come from the changes at run time, so the statements are composed
with psycopg.sql (every name quoted), as chunks/sinks.py does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import Connection, sql

from unbroken.cdc.changes import UNCHANGED, Change
from unbroken.chunks import Chunk
from unbroken.chunks.sinks import table_name


def mirror(chunk: Chunk[Change], tables: Mapping[str, str]) -> None:
    """Apply `chunk.items` to the sink tables named by `tables` (source -> sink table)."""
    conn = chunk.conn
    for change in chunk.items:
        target = tables.get(change.relation)
        if target is None:
            raise ValueError(f"mirror() has no sink table for {change.relation}")
        apply_change(conn, target, change)


def _match(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder()) for c in columns
    )


def apply_change(conn: Connection[Any], table: str, change: Change) -> None:
    """One change on one sink table (see the module docstring)."""
    name = table_name(table)
    if change.op in ("insert", "update", "snapshot"):
        assert change.new is not None
        assert change.key is not None
        key = list(change.key)
        new_key = {k: change.new.get(k, UNCHANGED) for k in key}
        if change.op == "update" and new_key != change.key:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE {}").format(name, _match(key)),
                list(change.key.values()),
            )
        row = {c: v for c, v in change.new.items() if v is not UNCHANGED}
        columns = list(row)
        updated = [c for c in columns if c not in key]
        action = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updated
                )
            )
            if updated
            else sql.SQL("DO NOTHING")
        )
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
                name,
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                sql.SQL(", ").join(map(sql.Identifier, key)),
                action,
            ),
            list(row.values()),
        )
    elif change.op == "delete":
        assert change.key is not None
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(name, _match(list(change.key))),
            list(change.key.values()),
        )
    elif change.op == "truncate":
        conn.execute(sql.SQL("DELETE FROM {}").format(name))
    elif change.op == "snapshot_range":
        _delete_absent(conn, name, change)
    else:
        raise ValueError(f"mirror() cannot apply a change of op {change.op!r}")


def _delete_absent(conn: Connection[Any], name: sql.Identifier, change: Change) -> None:
    """Delete the rows whose key is in the change's range and not among its keys."""
    cols = list(change.key_columns)
    row = sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, cols)))
    marks = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(cols)))
    where: list[sql.Composable] = []
    params: list[Any] = []
    if change.range_after is not None:
        where.append(sql.SQL("{} > {}").format(row, marks))
        params += list(change.range_after)
    if change.range_to is not None:
        where.append(sql.SQL("{} <= {}").format(row, marks))
        params += list(change.range_to)
    if change.keys:
        names = [sql.Identifier(f"k{i}") for i in range(len(cols))]
        where.append(
            sql.SQL("{} NOT IN (SELECT {} FROM unnest({}) AS kept ({}))").format(
                row,
                sql.SQL(", ").join(names),
                sql.SQL(", ").join(sql.Placeholder() * len(cols)),
                sql.SQL(", ").join(names),
            )
        )
        params += [[k[i] for k in change.keys] for i in range(len(cols))]
    condition = sql.SQL(" AND ").join(where) if where else sql.SQL("true")
    conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(name, condition), params)
