"""The benchmarks' PostgreSQL, and what we read from it: counters, statements, sessions.

By default a throwaway server in a temporary directory, started through
`unbroken.embedded.LocalServer` (the same code and binaries as the embedded default), with
only the settings the measurements need. `--embedded` uses the embedded default server
itself instead (figures that need pg_stat_statements or commit timestamps are then missing).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from unbroken.embedded import LocalServer, StopMode, ensure_embedded, wait_until_accepting

# Everything else is left at PostgreSQL's defaults, as the embedded server runs: fsync and
# synchronous_commit on (each commit waits for its WAL flush, which is exactly why
# transactions per job matter), shared_buffers 128 MB, max_connections 100.
BENCH_CONF: dict[str, str] = {
    # statements per job: calls of every statement, by database
    "shared_preload_libraries": "pg_stat_statements",
    # "the last job's outcome committed" is read from the rows: pg_xact_commit_timestamp(xmin)
    "track_commit_timestamp": "on",
}
REPORTED_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_connections",
    "jit",
    "track_commit_timestamp",
    "shared_preload_libraries",
)


class BenchServer:
    """A PostgreSQL for the benchmarks, with one database per system under test."""

    def __init__(self, *, embedded: bool = False) -> None:
        self.embedded = embedded
        self._root: Path | None = None
        self.server: LocalServer | None = None

    def start(self) -> BenchServer:
        if self.embedded:
            from unbroken.settings import load_settings

            s = load_settings()
            _, server, _ = ensure_embedded(s.data_dir, s.embedded_port)
            self.server = server
        else:
            self._root = Path(tempfile.mkdtemp(prefix="unbroken-bench-pg-"))
            self.server = LocalServer(self._root / "data", extra_conf=BENCH_CONF)
            self.server.init()
            self.server.start()
        wait_until_accepting(self.admin_url)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if self.has_pgss():
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return self

    def close(self) -> None:
        if self.embedded or self.server is None:
            return  # the embedded default server is the user's: leave it running
        try:
            self.server.stop("immediate")
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)

    @property
    def local(self) -> LocalServer:
        assert self.server is not None, "start() first"
        return self.server

    @property
    def admin_url(self) -> str:
        return self.local.url("postgres")

    def url(self, dbname: str) -> str:
        return self.local.url(dbname)

    def fresh_database(self, name: str) -> str:
        """Drop (if there) and create database `name`; returns its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))

    def restart(self, mode: StopMode) -> None:
        self.local.restart(mode)

    def setting(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()
        return str(row[0]) if row and row[0] is not None else ""

    def has_pgss(self) -> bool:
        return "pg_stat_statements" in self.setting("shared_preload_libraries")

    def has_commit_ts(self) -> bool:
        return self.setting("track_commit_timestamp") == "on"

    def settings_report(self) -> dict[str, str]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)",
                [list(REPORTED_SETTINGS)],
            ).fetchall()
        found = {name: f"{setting}{' x ' + unit if unit else ''}" for name, setting, unit in rows}
        found["binaries"] = self.local.binaries.describe()
        found["server"] = (
            "embedded default server" if self.embedded else "throwaway LocalServer (temp dir)"
        )
        return {k: found[k] for k in ("server", "binaries", *REPORTED_SETTINGS) if k in found}


# --- counters -----------------------------------------------------------------------------------
def backends(admin_url: str, dbname: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [dbname],
        ).fetchone()
    return int(row[0]) if row else 0


def wait_no_backends(admin_url: str, dbname: str, timeout: float = 30.0) -> None:
    """Wait until no session is connected to dbname: backends flush their stats on exit."""
    deadline = time.monotonic() + timeout
    while backends(admin_url, dbname) and time.monotonic() < deadline:
        time.sleep(0.02)


def xact_count(admin_url: str, dbname: str) -> int:
    """Committed plus rolled-back transactions of dbname (pg_stat_database)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            [dbname],
        ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class StatementStats:
    query: str
    calls: int
    rows: int
    total_ms: float


def statements(admin_url: str, dbname: str) -> dict[int, StatementStats]:
    """pg_stat_statements of dbname's top-level statements, by queryid."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT queryid, query, calls, rows, total_exec_time FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s) AND toplevel",
            [dbname],
        ).fetchall()
    return {int(qid): StatementStats(q, int(c), int(r), float(t)) for qid, q, c, r, t in rows}


def statement_delta(
    before: dict[int, StatementStats], after: dict[int, StatementStats]
) -> list[StatementStats]:
    out = []
    for qid, a in after.items():
        b = before.get(qid)
        calls = a.calls - (b.calls if b else 0)
        if calls > 0:
            rows = a.rows - (b.rows if b else 0)
            total = a.total_ms - (b.total_ms if b else 0.0)
            out.append(StatementStats(a.query, calls, rows, total))
    return sorted(out, key=lambda s: -s.calls)


_COMMENT = re.compile(r"--[^\n]*")
# pg_stat_statements shows parameters as $n and constants as $n too
_PLACEHOLDER = re.compile(r"%\(\w+\)s|\$\d+|'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")
_SPACE = re.compile(r"\s+")
_NULL = re.compile(r"\bNULL\b", re.IGNORECASE)
_LIST = re.compile(r"\?(?:\s*/\*, \.\.\. \*/|\s*,\s*\?)+")  # PostgreSQL 18 squashes lists


def fingerprint(text: str) -> str:
    """A statement's shape: comments dropped, placeholders unified, whitespace collapsed."""
    text = _NULL.sub("?", _PLACEHOLDER.sub("?", _COMMENT.sub(" ", text)))
    text = _LIST.sub("?", _SPACE.sub(" ", text))
    return text.strip().rstrip(";").strip()


def label_statements(
    stats: list[StatementStats], known: dict[str, str], width: int = 48
) -> list[tuple[str, StatementStats]]:
    """Name each statement by the named query it is, else by its first words; merge by name."""
    merged: dict[str, StatementStats] = {}
    for s in stats:
        name = known.get(fingerprint(s.query)) or _SPACE.sub(" ", s.query).strip()[:width]
        if name in merged:
            m = merged[name]
            s = StatementStats(m.query, m.calls + s.calls, m.rows + s.rows, m.total_ms + s.total_ms)
        merged[name] = s
    return sorted(merged.items(), key=lambda item: -item[1].calls)


# --- sessions -----------------------------------------------------------------------------------
@dataclass
class ActivitySampler:
    """Counts dbname's sessions by application_name every `interval` seconds, in a thread."""

    admin_url: str
    dbname: str
    interval: float = 0.01
    samples: int = 0
    peak_total: int = 0
    peak_by_app: Counter[str] = field(default_factory=Counter)
    peak_by_prefix: dict[str, int] = field(default_factory=dict)
    peak_runtime_by_prefix: dict[str, int] = field(default_factory=dict)  # all but the listener
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: str | None = None

    def __enter__(self) -> ActivitySampler:
        self._thread = threading.Thread(target=self._run, name="activity-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        query = (
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY 1"
        )
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                while not self._stop.is_set():
                    conn.execute("SELECT pg_stat_clear_snapshot()")
                    rows = conn.execute(query, [self.dbname]).fetchall()
                    self._record({str(app): int(n) for app, n in rows})
                    self._stop.wait(self.interval)
        except psycopg.Error as exc:
            self.error = str(exc)

    def _record(self, by_app: dict[str, int]) -> None:
        self.samples += 1
        self.peak_total = max(self.peak_total, sum(by_app.values()))
        by_prefix: Counter[str] = Counter()
        runtime: Counter[str] = Counter()
        for app, n in by_app.items():
            self.peak_by_app[app] = max(self.peak_by_app[app], n)
            prefix, _, role = app.partition(":")
            by_prefix[prefix] += n
            if role != "listener":
                runtime[prefix] += n
        for prefix, n in by_prefix.items():
            self.peak_by_prefix[prefix] = max(self.peak_by_prefix.get(prefix, 0), n)
        for prefix, n in runtime.items():
            self.peak_runtime_by_prefix[prefix] = max(self.peak_runtime_by_prefix.get(prefix, 0), n)

    def peak_for(self, prefix: str) -> dict[str, Any]:
        """Peak sessions of one worker process (application_name `prefix:role`)."""
        roles = {
            app.split(":", 1)[1] if ":" in app else "(none)": n
            for app, n in self.peak_by_app.items()
            if app == prefix or app.startswith(prefix + ":")
        }
        return {
            "peak_total": self.peak_by_prefix.get(prefix, 0),
            "peak_without_listener": self.peak_runtime_by_prefix.get(prefix, 0),
            "peak_by_role": roles,
            "samples": self.samples,
        }
