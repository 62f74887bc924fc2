"""What every connection unbroken opens is told: keepalives, timeouts, a name.

The settings that make a dead network visible (keepalives, tcp_user_timeout) and the
server-side limits that stop a session from holding a transaction open forever are set
once here, for every pool, so no code path can forget them.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from unbroken.settings import Settings

_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_PASSWORD_IN_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide any password in a URL, conninfo string or error message."""
    text = _PASSWORD_IN_URL.sub(r"\1***\3", text)
    return _PASSWORD_IN_KV.sub(r"\1***", text)


# Pools whose connections run the user's own statements keep the server's own settings.
USER_ROLES = frozenset({"chunks"})


def connection_kwargs(settings: Settings, *, role: str) -> dict[str, Any]:
    """Keyword arguments for psycopg.connect() beyond the conninfo itself."""
    options = []
    if role not in USER_ROLES:
        # An acknowledged claim or outcome must survive a crash: with synchronous_commit off
        # the server could forget a claim and hand the job out again while its first run
        # goes on (the claim token fences that run's writes, not what it does elsewhere).
        # Our batches commit rarely, so waiting costs little.
        options.append("-c synchronous_commit=on")
    if settings.statement_timeout:
        options.append(f"-c statement_timeout={int(settings.statement_timeout * 1000)}")
    idle_limit = settings.idle_in_transaction_timeout
    if role in USER_ROLES and idle_limit:
        # A chunk's transaction never waits on its source; idle past the lease means its
        # worker is paused or gone, and its commit would be fenced anyway. Ending the
        # session then frees the rows it locked for the worker that took the job over.
        idle_limit = min(idle_limit, settings.lease_seconds)
    if idle_limit:
        ms = int(idle_limit * 1000)
        options.append(f"-c idle_in_transaction_session_timeout={ms}")
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
    if options:
        kwargs["options"] = " ".join(options)
    if settings.pgbouncer == "transaction":
        # Named prepared statements do not survive transaction pooling.
        kwargs["prepare_threshold"] = None
    return kwargs


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
