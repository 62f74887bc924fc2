"""The CDC tests' source: a second throwaway PostgreSQL with wal_level=logical.

The session server (tests/pg.py) keeps its settings; CDC reads from `cdc_server`, started
once per session, so a test can stop or restart the SOURCE while the sink (the usual
`database_url`/`app` on the session server) stays up. `cdc_source` gives each test its own
database on it, and drops that database's replication slots and publications afterwards
(a database with a slot cannot be dropped).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pg import session_binaries
from unbroken.embedded import LocalServer, StopMode, wait_until_accepting

SOURCE_CONF = {
    "wal_level": "logical",
    "max_replication_slots": "40",
    "max_wal_senders": "40",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class CdcServer:
    """The source server: started once, brought back up after every test."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="unbroken-cdc-pg-"))
        self.server = LocalServer(
            self.root / "data", binaries=session_binaries(), extra_conf=SOURCE_CONF
        )
        self._names = iter(range(1, 1_000_000))
        self._lock = threading.Lock()

    def start(self) -> CdcServer:
        self.server.init()
        self.server.start()
        wait_until_accepting(self.admin_url)
        return self

    def close(self) -> None:
        try:
            self.server.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def admin_url(self) -> str:
        return self.server.url("postgres")

    def ensure_up(self) -> None:
        if not self.server.is_running():
            self.server.start()
        wait_until_accepting(self.admin_url)

    def create_database(self) -> str:
        name = f"src_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 STRATEGY FILE_COPY").format(
                    sql.Identifier(name)
                )
            )
        return self.server.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                [name],
            )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class CdcSource:
    """One test's source database on the CDC server, and faults on that server."""

    def __init__(self, pg: CdcServer) -> None:
        self.pg = pg
        self.server = pg.server
        self.url = pg.create_database()
        self.others: list[str] = []

    def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement in the source database (autocommit); its rows, if any."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query.encode(), params)
            return cur.fetchall() if cur.description else []

    def value(self, query: str, params: Any = None) -> Any:
        rows = self.execute(query, params)
        return rows[0][0] if rows else None

    def other_database(self) -> str:
        """Another database on the same server (for writes the pipeline must not see)."""
        url = self.pg.create_database()
        self.others.append(url)
        return url

    def stop(self, mode: StopMode = "fast") -> None:
        with self.pg._lock:
            self.server.stop(mode)

    def start(self) -> None:
        with self.pg._lock:
            self.server.start()
        wait_until_accepting(self.pg.admin_url)

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def close(self) -> None:
        self.pg.ensure_up()
        for url in [self.url, *self.others]:
            self.pg.drop_database(url)
