"""What the worker tests share: waiting on the database, and workers in threads or processes.

Tests wait on events (a row reaching a state, a line in a worker's log, a process exiting)
by polling with a deadline; a deadline is a bound that fails the test, never the mechanism
that makes it pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from unbroken import App, Worker
from unbroken.sql import queries

REPO = Path(__file__).resolve().parents[2]
APP_REF = "tests.apps.fault_app:app"

# Short leases and intervals, so rescues, retries and shutdowns happen within seconds.
FAST_SETTINGS: dict[str, Any] = {
    "lease_seconds": 3.0,
    "rescue_interval": 1.0,
    "promote_interval": 0.1,
    "poll_interval": 0.2,
    "heartbeat_interval": 0.3,
    "shutdown_timeout": 2.0,
    "concurrency": 4,
    "max_payload_bytes": 1000,
}
T = TypeVar("T")
SQLText = str | bytes | sql.SQL | sql.Composed

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS public.executions (
    id        bigserial PRIMARY KEY,
    job_id    bigint NOT NULL,
    attempt   integer NOT NULL,
    pid       integer NOT NULL,
    worker_id text NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last seen: {value!r})")
        time.sleep(interval)


FETCH_CALLS = (
    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
    " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND (query LIKE 'WITH picked AS%' OR query LIKE 'WITH open_queues AS%')"  # both fetches
)


class Probe:
    """The test's own view of the database: short statements, reconnecting after a fault."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    def rows(self, query: SQLText, params: Any = None) -> list[dict[str, Any]]:
        for attempt in range(100):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self.url, autocommit=True, row_factory=dict_row, connect_timeout=3
                    )
                cur = self._conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                # the server is restarting under the test: try again on a new connection
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt == 99:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def value(self, query: SQLText, params: Any = None) -> Any:
        rows = self.rows(query, params)
        return next(iter(rows[0].values())) if rows else None

    def job(self, job_id: int) -> dict[str, Any]:
        rows = self.rows(queries()["job_get"], {"id": job_id})
        assert rows, f"job {job_id} does not exist"
        return rows[0]

    def state(self, job_id: int) -> str:
        return str(self.job(job_id)["state"])

    def wait_state(self, job_id: int, states: str | tuple[str, ...], timeout: float) -> Any:
        wanted = (states,) if isinstance(states, str) else states
        return wait_until(
            lambda: (row := self.job(job_id))["state"] in wanted and row,
            timeout=timeout,
            what=f"job {job_id} in {'/'.join(wanted)} (is {self.state(job_id)})",
        )

    def fetches(self) -> int:
        """How many fetches (job_get_available) workers have run in this database so far
        (pg_stat_statements, which the session server preloads)."""
        self.rows("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return int(self.value(FETCH_CALLS))

    def wait_fetching_idle(self, *, more_than: int = 0, quiet: float = 0.5) -> int:
        """Wait until more than `more_than` fetches were run and none for `quiet` seconds:
        every worker has looked for work and now waits (for a notification, or its poll).
        Returns the count."""
        last, since = -1, time.monotonic()

        def settled() -> int:
            nonlocal last, since
            count, now = self.fetches(), time.monotonic()
            if count != last:
                last, since = count, now
            return count if count > more_than and now - since >= quiet else 0

        return wait_until(settled, timeout=30, what="the workers' fetches to settle")

    def executions(self, job_id: int) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM executions WHERE job_id = %s ORDER BY id", [job_id])

    def create_executions(self) -> None:
        self.rows(EXECUTIONS_DDL)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


# --- workers in this process -----------------------------------------------------------------
@contextlib.contextmanager
def running_worker(app: App, **overrides: Any) -> Iterator[Worker]:
    """`app.worker(...)` running in a thread for the duration of the block, then stopped."""
    worker = app.worker(handle_signals=False, **overrides)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    wait_until(lambda: worker.started.is_set() or errors, timeout=30, what="the worker to start")
    if errors:
        raise errors[0]
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop within 60 s"
    if errors:
        raise errors[0]


# --- workers in their own processes ------------------------------------------------------------
class WorkerProcess:
    """A real worker process with settings from UNBROKEN_* variables, logging to a file.

    Signals go through the Popen handle, which refuses to signal a process it has already
    reaped, so a recycled pid is never hit.
    """

    def __init__(
        self,
        url: str,
        log_dir: Path,
        name: str,
        app_ref: str = APP_REF,
        cli_args: tuple[str, ...] = (),
        **settings: Any,
    ) -> None:
        self.name = name
        self.worker_id = ""
        self.log_path = log_dir / f"{name}.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("UNBROKEN_", "PG")) and k != "DATABASE_URL"
        }
        env.update(
            {
                "UNBROKEN_DATABASE_URL": url,
                "UNBROKEN_LOG_LEVEL": "INFO",
                "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
                "PYTHONUNBUFFERED": "1",
                "COLUMNS": "400",  # the CLI's rich log handler wraps at the terminal width
            }
        )
        env.update({f"UNBROKEN_{k.upper()}": str(v) for k, v in settings.items()})
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unbroken", "worker", "--app", app_ref, *cli_args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.alive(), f"worker {self.name} already exited:\n{self.log()}"
        self.proc.send_signal(sig)

    def wait_registered(self, probe: Probe, timeout: float = 30) -> str:
        """The worker's id, once it has registered itself in the workers table."""

        def registered() -> str | None:
            assert self.alive(), f"worker {self.name} exited early:\n{self.log()}"
            found = probe.value("SELECT id FROM unbroken.workers WHERE pid = %s", [self.pid])
            return None if found is None else str(found)

        self.worker_id = str(
            wait_until(registered, timeout=timeout, what=f"worker {self.name} to start")
        )
        return self.worker_id

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code (a clean shutdown is 0)."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} still running after {timeout:g} s:\n{self.log()[-3000:]}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_flat(self) -> str:
        """The log with all whitespace runs as one space (the CLI's handler wraps lines)."""
        return re.sub(r"\s+", " ", self.log())

    def close(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(30)
        self._log.close()


StartWorker = Callable[..., WorkerProcess]


@contextlib.contextmanager
def worker_processes(
    url: str, log_dir: Path, app_ref: str = APP_REF, **defaults: Any
) -> Iterator[Callable[..., WorkerProcess]]:
    """A factory of WorkerProcess; every one started is killed at the end of the block."""
    started: list[WorkerProcess] = []

    def start(name: str, cli_args: tuple[str, ...] = (), **settings: Any) -> WorkerProcess:
        proc = WorkerProcess(url, log_dir, name, app_ref, cli_args, **{**defaults, **settings})
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.close()


def insert_jobs(
    probe: Probe,
    task: str,
    n: int = 1,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue: str = "default",
    max_attempts: int = 20,
) -> list[int]:
    """Enqueue `n` jobs of `task` by name, in one job_insert_many statement.

    For tests whose tasks live in another process's app (or in none: an unknown task).
    """
    payload = json.dumps({"args": args or [], "kwargs": kwargs or {}})
    rows = probe.rows(
        queries()["job_insert_many"],
        {
            "queues": [queue] * n,
            "tasks": [task] * n,
            "args": [payload] * n,
            "priorities": [0] * n,
            "run_ats": [None] * n,
            "max_attempts": [max_attempts] * n,
            "unique_keys": [None] * n,
            "limit_keys": [None] * n,
        },
    )
    return [int(r["id"]) for r in rows]
