"""A CDC pipeline's replication slot on its source, as `unbroken pipelines drop-slot` drops it.

The source is another database than unbroken's own: reached with a URL the operator gives
(cdc_pipelines keeps the source URL without its password; libpq may still find one in
PGPASSWORD or ~/.pgpass), through the pipeline's own source connection (unbroken.cdc.source).
Before dropping, the session must be on the pipeline's own server and database (system
identifier and name, when the pipeline recorded them), so a URL pointing at another server
with a slot of the same name drops nothing there.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from unbroken.cdc.source import SourceDB
from unbroken.db.conninfo import describe_target, error_line
from unbroken.errors import DatabaseUnavailable, UnbrokenError
from unbroken.ops.rows import PipelineDetail
from unbroken.settings import Settings

MASK = "***"  # what unbroken.db.conninfo.redact puts in place of a password


def slot_drop(source_url: str, pipeline: PipelineDetail, settings: Settings) -> bool:
    """Drop the pipeline's slot on its source; True when it was there, False when it was not."""
    source = SourceDB(source_url, settings, slot=pipeline.slot_name, publication="")
    try:
        source.open(wait=0)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(f"pipeline {pipeline.name!r}: {exc}") from None
    try:
        found = source.identity()
        expected = (pipeline.system_identifier, pipeline.database)
        for what, there, wanted in zip(
            ("system identifier", "database"), found, expected, strict=True
        ):
            if wanted is not None and there != wanted:
                raise UnbrokenError(
                    f"{describe_target(source_url)} is not the source of pipeline "
                    f"{pipeline.name!r}: its {what} is {there}, the pipeline's {wanted}"
                )
        return source.drop_slot()
    except psycopg.errors.ObjectInUse as exc:
        raise UnbrokenError(
            f"{error_line(exc)}: a worker is reading from it; stop the pipeline's job first"
        ) from None
    finally:
        source.close()


def without_mask(url: str) -> str:
    """The stored source URL as a URL to connect with: run_pipeline stores it as redact()
    writes it, its password replaced by "***", which would be sent as the password; without
    one, libpq looks in PGPASSWORD and ~/.pgpass."""
    params = conninfo_to_dict(url)
    if params.get("password") == MASK:
        del params["password"]
    return make_conninfo("", **params)
