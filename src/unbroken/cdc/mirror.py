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

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import Connection, sql

from unbroken.cdc.changes import UNCHANGED, Change
from unbroken.chunks import Chunk
from unbroken.chunks.sinks import table_name


def mirror(chunk: Chunk[Change], tables: Mapping[str, str]) -> None:
    """Apply `chunk.items` to the sink tables named by `tables` (source -> sink table).

    Runs of changes that take the same statement (inserts of one table with the same
    columns, deletes of one table, ...) go in one `executemany`, in order."""
    statement: Any = None
    batch: list[Sequence[Any]] = []
    with chunk.conn.cursor() as cur:
        for change in chunk.items:
            target = tables.get(change.relation)
            if target is None:
                raise ValueError(f"mirror() has no sink table for {change.relation}")
            for shape, params in _steps(target, change):
                if shape != statement and batch:
                    cur.executemany(_statement(*statement), batch)
                    batch = []
                statement = shape
                batch.append(params)
        if batch:
            cur.executemany(_statement(*statement), batch)


def apply_change(conn: Connection[Any], table: str, change: Change) -> None:
    """One change on one sink table (see the module docstring)."""
    for shape, params in _steps(table, change):
        conn.execute(_statement(*shape), params)


Shape = tuple[str, str, tuple[str, ...], tuple[str, ...]]  # (kind, table, columns, key)


def _steps(table: str, change: Change) -> list[tuple[Shape, Sequence[Any]]]:
    """The statements (by shape) and parameters that apply `change` to `table`."""
    if change.op in ("insert", "update", "snapshot"):
        assert change.new is not None
        assert change.key is not None
        key = tuple(change.key)
        steps: list[tuple[Shape, Sequence[Any]]] = []
        if change.op == "update" and any(change.new.get(k) != v for k, v in change.key.items()):
            steps.append((("delete", table, (), key), list(change.key.values())))
        row = {c: v for c, v in change.new.items() if v is not UNCHANGED}
        steps.append((("upsert", table, tuple(row), key), list(row.values())))
        return steps
    if change.op == "delete":
        assert change.key is not None
        return [(("delete", table, (), tuple(change.key)), list(change.key.values()))]
    if change.op == "truncate":
        return [(("truncate", table, (), ()), [])]
    if change.op == "snapshot_range":
        return [_delete_absent(table, change)]
    raise ValueError(f"mirror() cannot apply a change of op {change.op!r}")


def _match(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder()) for c in columns
    )


@functools.lru_cache(maxsize=256)
def _statement(kind: str, table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> Any:
    name = table_name(table)
    if kind == "delete":
        return sql.SQL("DELETE FROM {} WHERE {}").format(name, _match(key))
    if kind == "truncate":
        return sql.SQL("DELETE FROM {}").format(name)
    if kind == "upsert":
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
        return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
            name,
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            sql.SQL(", ").join(map(sql.Identifier, key)),
            action,
        )
    assert kind.startswith("absent:")  # a snapshot_range: which bounds, how many keys
    _, after, to, kept = kind.split(":")
    row = sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, key)))
    marks = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(key)))
    where: list[sql.Composable] = []
    if after == "1":
        where.append(sql.SQL("{} > {}").format(row, marks))
    if to == "1":
        where.append(sql.SQL("{} <= {}").format(row, marks))
    if kept == "1":
        names = [sql.Identifier(f"k{i}") for i in range(len(key))]
        where.append(
            sql.SQL("{} NOT IN (SELECT {} FROM unnest({}) AS kept ({}))").format(
                row,
                sql.SQL(", ").join(names),
                sql.SQL(", ").join(sql.Placeholder() * len(key)),
                sql.SQL(", ").join(names),
            )
        )
    condition = sql.SQL(" AND ").join(where) if where else sql.SQL("true")
    return sql.SQL("DELETE FROM {} WHERE {}").format(name, condition)


def _delete_absent(table: str, change: Change) -> tuple[Shape, Sequence[Any]]:
    """Delete the rows whose key is in the change's range and not among its keys."""
    key = change.key_columns
    params: list[Any] = []
    if change.range_after is not None:
        params += list(change.range_after)
    if change.range_to is not None:
        params += list(change.range_to)
    if change.keys:
        params += [[k[i] for k in change.keys] for i in range(len(key))]
    flags = (change.range_after is not None, change.range_to is not None, bool(change.keys))
    kind = "absent:" + ":".join("1" if f else "0" for f in flags)
    return (kind, table, (), key), params
