"""Numbered forward migrations, applied under an advisory lock.

`NNNN_name.sql` files in this folder run in order, each once, all pending ones in a single
transaction that first takes a transaction-level advisory lock: two processes migrating at
once serialise, and the second finds nothing left to do. A transaction-level lock (not a
session one) also works through PgBouncer in transaction mode. `schema.sql` is the whole
schema in one file for teams that apply SQL with their own tools; a test proves the
migrations produce exactly it.

The migrating role needs CREATE on the schema (or to own it), and nothing on the database
once the schema exists: it is created only when missing. The transaction runs with our own
search_path whatever the connection's, and a role that may not migrate gets one
`MigrationError` line saying who may (docs/security.md).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from unbroken.db.conninfo import safe_search_path
from unbroken.errors import MigrationError

logger = logging.getLogger("unbroken.migrations")
HERE = Path(__file__).parent
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# "unbroken" as a schema qualifier, in "unbroken.jobs", "SCHEMA unbroken;" or a channel name.
_SCHEMA_TOKEN = re.compile(r"\bunbroken(?=[.;\s])")
_SCHEMA_OK = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self, schema: str) -> str:
        return render(self.path.read_text(), schema)


def render(text: str, schema: str) -> str:
    """Put the configured schema where the SQL says `unbroken`."""
    if not _SCHEMA_OK.match(schema):
        raise MigrationError(f"schema name {schema!r} is not a plain lower-case identifier")
    return text if schema == "unbroken" else _SCHEMA_TOKEN.sub(schema, text)


def available() -> list[Migration]:
    found = []
    for path in sorted(HERE.glob("*.sql")):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path))
    return found


def full_schema_sql(schema: str = "unbroken") -> str:
    """The whole schema as one script, ending at the newest migration's version."""
    return render((HERE / "schema.sql").read_text(), schema)


def _ensure_schema(conn: psycopg.Connection[Any], schema: str) -> str | None:
    """Create the schema if it is missing; a warning to log if another role owns it.

    Not `CREATE SCHEMA IF NOT EXISTS`: that needs CREATE on the database even when the
    schema exists, which a migrator given only its schema does not have."""
    row = conn.execute(
        "SELECT current_user::text, (SELECT pg_catalog.pg_get_userbyid(nspowner)::text"
        " FROM pg_catalog.pg_namespace WHERE nspname = %s)",
        [schema],
    ).fetchone()
    user, owner = row if row is not None else (None, None)
    if owner is None:
        conn.execute(render("CREATE SCHEMA unbroken;", schema).encode())
        return None
    if owner == user:
        return None
    return (
        f"schema {schema!r} is owned by role {owner}, not by {user}, which migrated it: "
        f"{owner} can drop or replace every object in it; prefer CREATE SCHEMA {schema} "
        f"AUTHORIZATION {user} (docs/security.md)"
    )


def _bootstrap(schema: str) -> str:
    return render(
        "CREATE TABLE IF NOT EXISTS unbroken.migrations (\n"
        "    version    integer PRIMARY KEY,\n"
        "    name       text NOT NULL,\n"
        "    applied_at timestamptz NOT NULL DEFAULT now()\n"
        ");\n",
        schema,
    )


def applied_versions(conn: psycopg.Connection[Any], schema: str) -> set[int]:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{schema}.migrations"])
    row = exists.fetchone()
    if not row or not row[0]:
        return set()
    cur = conn.execute(render("SELECT version FROM unbroken.migrations", schema).encode())
    return {r[0] for r in cur.fetchall()}


def pending(conn: psycopg.Connection[Any], schema: str) -> list[Migration]:
    done = applied_versions(conn, schema)
    return [m for m in available() if m.version not in done]


def migrate(conn: psycopg.Connection[Any], schema: str = "unbroken") -> list[Migration]:
    """Apply every pending migration in one transaction; return the ones applied."""
    if not pending(conn, schema):
        return []  # the common case costs one query and takes no lock
    try:
        with conn.transaction():
            # A migration may rewrite a big table: the runtime's statement timeout is for
            # its own short statements, not for this one transaction.
            conn.execute("SET LOCAL statement_timeout = 0")
            # Whatever the connection's search_path (a caller's own connection), nothing
            # planted in public can shadow a function the migrations call.
            conn.execute(
                "SELECT pg_catalog.set_config('search_path', %s, true)", [safe_search_path(schema)]
            )
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"unbroken:{schema}"])
            owner_warning = _ensure_schema(conn, schema)
            conn.execute(_bootstrap(schema).encode())
            todo = pending(conn, schema)  # again, under the lock
            for migration in todo:
                conn.execute(migration.sql(schema).encode())
                conn.execute(
                    render(
                        "INSERT INTO unbroken.migrations (version, name) VALUES (%s, %s)", schema
                    ).encode(),
                    [migration.version, migration.name],
                )
                logger.info("applied migration %04d_%s", migration.version, migration.name)
    except psycopg.errors.DuplicateObject as exc:
        raise MigrationError(
            f"schema {schema!r} already holds objects the migrations would create, but no "
            f"record of them in {schema}.migrations: {exc.diag.message_primary}"
        ) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        user = conn.info.user
        raise MigrationError(
            f"role {user} may not migrate schema {schema!r} ({exc.diag.message_primary}): "
            "apply the migrations as the schema's owner (unbroken db migrate, "
            "docs/security.md), then start the workers"
        ) from None
    if todo and owner_warning is not None:
        logger.warning("%s", owner_warning)
    return todo
