"""Which database to use: the configured one, or the embedded server; and how to reach it.

Two flags decide how a process reaches its database (`Access`):

- `may_start_embedded`: with no database configured, start the embedded server when it is
  not running. Code that runs work (a worker, an enqueue, the demo, `unbroken db start`) may;
  a command that only looks (`jobs ls`, `stats`, the dashboard, ...) says the server is
  stopped and how to start it instead, so `unbroken db stop` stays stopped.
- `fail_fast`: try a configured database once (its connect timeout) before anything else
  and raise `DatabaseUnavailable` at once if it does not answer. A person at a terminal
  wants to know now; only a worker waits for its database (UNBROKEN_STARTUP_WAIT).

A library user's `App` may start the server and waits (the defaults); the CLI sets the
process's access per command (`set_access`, from `unbroken.cli.main`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from unbroken.db.conninfo import connection_kwargs, describe_target, redact
from unbroken.errors import DatabaseUnavailable
from unbroken.settings import Settings

logger = logging.getLogger("unbroken.db")


@dataclass(frozen=True)
class Access:
    """How this process may reach its database (see the module docstring)."""

    may_start_embedded: bool = True
    fail_fast: bool = False


_access = Access()


def set_access(access: Access) -> Access:
    """Set how this process reaches its database; returns the previous setting."""
    global _access
    previous, _access = _access, access
    return previous


def current_access() -> Access:
    return _access


@dataclass(frozen=True)
class Target:
    conninfo: str
    source: str  # what an operator reads: "UNBROKEN_DATABASE_URL", "embedded PostgreSQL 18 ..."
    embedded: bool

    def describe(self) -> str:
        return f"{describe_target(self.conninfo)} ({self.source})"

    def redacted(self) -> str:
        return redact(self.conninfo)


def resolve_target(
    settings: Settings,
    *,
    may_start_embedded: bool | None = None,
    fail_fast: bool | None = None,
) -> Target:
    """The configured database, or the embedded one (started now if it is not running and
    starting it is allowed). Flags left None come from the process's `Access`."""
    access = current_access()
    may_start = access.may_start_embedded if may_start_embedded is None else may_start_embedded
    fail_fast = access.fail_fast if fail_fast is None else fail_fast
    configured = settings.configured_url()
    if configured is not None:
        if settings.database_url:
            source = "UNBROKEN_DATABASE_URL"
        elif configured:
            source = "DATABASE_URL"
        else:
            source = "libpq PG* environment"
        target = Target(configured, source, embedded=False)
        if fail_fast:
            _check_reachable(target, settings)
        return target
    from unbroken.embedded import ensure_embedded

    url, server, started = ensure_embedded(
        settings.data_dir, settings.embedded_port, start=may_start
    )
    verb = "started" if started else "reusing"
    source = f"embedded PostgreSQL, {verb}, data in {server.data_dir}"
    logger.info("%s embedded PostgreSQL (%s) on port %s", verb, server.binaries.source, server.port)
    return Target(url, source, embedded=True)


def _check_reachable(target: Target, settings: Settings) -> None:
    """One connection attempt (the configured connect timeout); DatabaseUnavailable if the
    server does not answer."""
    import psycopg

    try:
        psycopg.connect(target.conninfo, **connection_kwargs(settings, role="startup")).close()
    except psycopg.Error as exc:
        text = redact(str(exc)).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise DatabaseUnavailable(
            f"database not reachable: {describe_target(target.conninfo)} ({target.source}): "
            f"{reason}"
        ) from None
