"""A CDC pipeline's replication slot on its source, as `unbroken pipelines drop-slot` drops it.

The source is another database than unbroken's own: reached with a URL the operator gives
(cdc_pipelines keeps the source URL without its password; libpq may still find one in
PGPASSWORD or ~/.pgpass). Before dropping, the session must be on the pipeline's own server
and database (system identifier and name, when the pipeline recorded them), so a URL pointing
at another server with a slot of the same name drops nothing there.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import scalar_row

from unbroken.db.conninfo import describe_target, error_line
from unbroken.errors import DatabaseUnavailable, UnbrokenError
from unbroken.ops.rows import PipelineDetail
from unbroken.sql import queries


def slot_drop(source_url: str, pipeline: PipelineDetail, *, connect_timeout: float) -> bool:
    """Drop the pipeline's slot on its source; True when it was there, False when it was not."""
    named = queries()
    try:
        conn = psycopg.connect(source_url, autocommit=True, connect_timeout=int(connect_timeout))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the source of pipeline {pipeline.name!r} "
            f"({describe_target(source_url)}): {error_line(exc)}"
        ) from None
    with conn:
        system_identifier, database = _identity(conn)
        expected = (pipeline.system_identifier, pipeline.database)
        for what, found, wanted in zip(
            ("system identifier", "database"), (system_identifier, database), expected, strict=True
        ):
            if wanted is not None and found is not None and found != wanted:
                raise UnbrokenError(
                    f"{describe_target(source_url)} is not the source of pipeline "
                    f"{pipeline.name!r}: its {what} is {found}, the pipeline's {wanted}"
                )
        try:
            with conn.cursor(row_factory=scalar_row) as cur:
                dropped = cur.execute(named["source_slot_drop"], {"slot": pipeline.slot_name})
                return bool(dropped.fetchall())
        except psycopg.errors.ObjectInUse as exc:
            raise UnbrokenError(
                f"{error_line(exc)}: a worker is reading from it; stop the pipeline's job first"
            ) from None


def _identity(conn: psycopg.Connection[Any]) -> tuple[str | None, str]:
    """The source's system identifier (None when this role may not read it) and database."""
    named = queries()
    with conn.cursor(row_factory=scalar_row) as cur:
        database = str(cur.execute(named["source_database"]).fetchone())
        try:
            with conn.transaction():
                system_identifier = cur.execute(named["source_system_identifier"]).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return None, database
    return str(system_identifier), database
