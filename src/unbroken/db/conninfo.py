"""What every connection unbroken opens is told: keepalives, timeouts, a name.

The settings that make a dead network visible (keepalives, tcp_user_timeout) and the
server-side limits that stop a session from holding a transaction open forever are set
once here, for every pool, so no code path can forget them.

How the server limits travel depends on what is in between (`settings.pgbouncer`):
- nothing ("off"): in the startup packet's `options`, at no cost at all;
- PgBouncer in session mode, which refuses `options`: one statement on connect
  (`session_statement`) that sets them for the session (PgBouncer's DISCARD ALL ends them
  with it);
- PgBouncer in transaction mode, where a session setting would stay on a server connection
  that other clients get next: set for each transaction only (`transaction_statement`,
  set_config(..., true)), sent in one pipeline with the transaction's first statement
  (db/deadline.py), so it costs no round trip.

Among them is the search_path (`safe_search_path`): the system catalog, our schema, then
pg_temp, so a function or operator planted in `public` by any role that may create objects
there is never a better match than the built-in one our SQL means (docs/security.md).
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from unbroken.settings import Settings

_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_PASSWORD_IN_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide any password in a URL, conninfo string or error message."""
    text = _PASSWORD_IN_URL.sub(r"\1***\3", text)
    return _PASSWORD_IN_KV.sub(r"\1***", text)


def error_line(exc: BaseException) -> str:
    """An error as one line for a person to read: its first line, any password hidden."""
    lines = redact(str(exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# Pools whose connections run the user's own statements keep the server's own settings.
USER_ROLES = frozenset({"chunks", "tasks"})


def safe_search_path(schema: str) -> str:
    """The search_path of every session of ours: pg_catalog first and explicit, our schema
    (owned by the migrator, trusted), pg_temp last (named, so it cannot come first for
    tables); `public` and "$user" are never searched. No spaces: it travels in `options`."""
    return f"pg_catalog,{schema},pg_temp"


def server_settings(settings: Settings, *, role: str) -> dict[str, str]:
    """The server settings every session of `role` runs with, as the server reads them."""
    values: dict[str, str] = {}
    if role not in USER_ROLES:
        # The chunk and task sessions run the user's statements with the user's search_path;
        # the SQL we run there names its functions pg_catalog.<name> (sql/chunks.sql).
        values["search_path"] = safe_search_path(settings.schema_name)
        # An acknowledged claim or outcome must survive a crash: with synchronous_commit off
        # the server could forget a claim and hand the job out again while its first run
        # goes on (the claim token fences that run's writes, not what it does elsewhere).
        # Our batches commit rarely, so waiting costs little.
        values["synchronous_commit"] = "on"
    if settings.statement_timeout:
        values["statement_timeout"] = str(int(settings.statement_timeout * 1000))
    idle_limit = settings.idle_in_transaction_timeout
    if role == "chunks" and idle_limit:
        # A chunk's transaction never waits on its source; idle past the lease means its
        # worker is paused or gone, and its commit would be fenced anyway. Ending the
        # session then frees the rows it locked for the worker that took the job over.
        idle_limit = min(idle_limit, settings.lease_seconds)
    if idle_limit:
        values["idle_in_transaction_session_timeout"] = str(int(idle_limit * 1000))
    return values


def connection_kwargs(settings: Settings, *, role: str) -> dict[str, Any]:
    """Keyword arguments for psycopg.connect() beyond the conninfo itself."""
    kwargs: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout,
        "keepalives": 1,
        "keepalives_idle": settings.keepalives_idle,
        "keepalives_interval": settings.keepalives_interval,
        "keepalives_count": settings.keepalives_count,
        "application_name": f"{settings.application_name}:{role}",
        "autocommit": True,
    }
    if settings.tcp_user_timeout:
        kwargs["tcp_user_timeout"] = settings.tcp_user_timeout
    values = server_settings(settings, role=role)
    if settings.pgbouncer == "off" and values:
        # PgBouncer refuses this startup parameter: behind it the statements below apply them.
        kwargs["options"] = " ".join(f"-c {name}={value}" for name, value in values.items())
    if settings.pgbouncer == "transaction":
        # Named prepared statements do not survive transaction pooling.
        kwargs["prepare_threshold"] = None
    return kwargs


def session_statement(settings: Settings, *, role: str) -> bytes | None:
    """Behind PgBouncer in session mode: the statement to run once on connect."""
    if settings.pgbouncer != "session":
        return None
    return _set_config(server_settings(settings, role=role), local=False)


def transaction_statement(settings: Settings, *, role: str) -> bytes | None:
    """Behind PgBouncer in transaction mode: the statement that gives one transaction the
    settings (they end with it), run first in every transaction."""
    if settings.pgbouncer != "transaction":
        return None
    return _set_config(server_settings(settings, role=role), local=True)


def _set_config(values: dict[str, str], *, local: bool) -> bytes | None:
    """One SELECT of set_config() calls: one statement, one round trip, whatever the count.
    Qualified: it runs before the session's search_path is ours."""
    if not values:
        return None
    calls = [
        sql.SQL("pg_catalog.set_config({}, {}, {})").format(
            sql.Literal(name), sql.Literal(value), local
        )
        for name, value in values.items()
    ]
    return (sql.SQL("SELECT ") + sql.SQL(", ").join(calls)).as_bytes(None)


def describe_target(conninfo: str) -> str:
    """'host 127.0.0.1 port 5432 database app' for error messages (never the password)."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        return "the configured database"
    host = params.get("host") or params.get("hostaddr") or "localhost (default)"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "(default)"
    return f"host {host} port {port} database {dbname}"


def with_dbname(conninfo: str, dbname: str) -> str:
    return make_conninfo(conninfo, dbname=dbname)
