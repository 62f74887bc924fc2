"""Which database to use: the configured one, or the embedded server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from unbroken.db.conninfo import describe_target, redact
from unbroken.settings import Settings

logger = logging.getLogger("unbroken.db")


@dataclass(frozen=True)
class Target:
    conninfo: str
    source: str  # what an operator reads: "UNBROKEN_DATABASE_URL", "embedded PostgreSQL 18 ..."
    embedded: bool

    def describe(self) -> str:
        return f"{describe_target(self.conninfo)} ({self.source})"

    def redacted(self) -> str:
        return redact(self.conninfo)


def resolve_target(settings: Settings) -> Target:
    """The configured database, or the embedded one (started now if it is not running)."""
    configured = settings.configured_url()
    if configured is not None:
        if settings.database_url:
            source = "UNBROKEN_DATABASE_URL"
        elif configured:
            source = "DATABASE_URL"
        else:
            source = "libpq PG* environment"
        return Target(configured, source, embedded=False)
    from unbroken.embedded import ensure_embedded

    url, server, started = ensure_embedded(settings.data_dir, settings.embedded_port)
    verb = "started" if started else "reusing"
    source = f"embedded PostgreSQL, {verb}, data in {settings.data_dir}"
    logger.info("%s embedded PostgreSQL (%s) on port %s", verb, server.binaries.source, server.port)
    return Target(url, source, embedded=True)
