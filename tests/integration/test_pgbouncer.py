"""Through a real PgBouncer (the Debian package), in session and in transaction mode.

Stock PgBouncer refuses the `options` startup parameter, so unbroken's server settings
(statement_timeout, idle_in_transaction_session_timeout, synchronous_commit) cannot travel
in the startup packet behind it: with UNBROKEN_PGBOUNCER=session they are SET once on
connect, with =transaction they are set for every transaction (docs/pgbouncer.md). These
tests prove that everything connects through it (start-up probe, migrations, enqueue, a
worker running a job, the listener) and that the settings are in force: the server itself
cancels a statement past statement_timeout and ends a session idle in its transaction.

PgBouncer refuses to run as root: as root it runs as the `postgres` user (or the session
server's own system user). `make test` installs the package; run alone, the fixture tries
`apt-get install pgbouncer` as root and skips only if that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from apps.harness import FAST_SETTINGS, Probe, running_worker, wait_until
from pg import SessionPostgres
from unbroken import App
from unbroken.db._async.pool import AsyncDatabase
from unbroken.db._sync.pool import RolePool, wait_until_reachable
from unbroken.errors import ConfigError
from unbroken.runtime.notifier import Notifier
from unbroken.settings import Settings, load_settings
from unbroken.sql import queries

MODES = ("session", "transaction")


def _installed() -> str | None:
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


def _pgbouncer_binary() -> str | None:
    """The pgbouncer binary; as root with apt, installed first if it is missing."""
    if _installed() or os.geteuid() != 0 or not shutil.which("apt-get"):
        return _installed()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "pgbouncer"]
    for steps in ([install], [["apt-get", "update", "-q"], install]):
        for args in steps:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(args, env=env, capture_output=True, timeout=600, check=False)
        if _installed():
            break
    return _installed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bouncer:
    """One pgbouncer process in the foreground, in front of the session server."""

    def __init__(self, binary: str, server_port: int, mode: str) -> None:
        self.mode = mode
        self.root = Path(tempfile.mkdtemp(prefix=f"unbroken-pgbouncer-{mode}-"))
        self.port = 0
        self._binary = binary
        self._server_port = server_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = self._run_as()

    @staticmethod
    def _run_as() -> pwd.struct_passwd | None:
        """None: this user. As root (which pgbouncer refuses), a system user."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "embedded_postgres"):
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        pytest.skip("running as root and no postgres system user to run pgbouncer as")

    def start(self) -> Bouncer:
        for _ in range(5):  # a port found free can be taken before pgbouncer binds it
            self.port = _free_port()
            self._write_config()
            log = open(self.root / "pgbouncer.log", "wb")  # noqa: SIM115 (the process owns it)
            self._proc = subprocess.Popen(
                [self._binary, str(self.root / "pgbouncer.ini")],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user.pw_uid if self._user else None,
                group=self._user.pw_gid if self._user else None,
            )
            log.close()
            if self._wait_accepting():
                return self
            self.stop()
        raise AssertionError(f"pgbouncer did not start: {self.log_tail()}")

    def _write_config(self) -> None:
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            f"""[databases]
* = host=127.0.0.1 port={self._server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.root / "userlist.txt"}
pool_mode = {self.mode}
max_client_conn = 200
default_pool_size = 40
admin_users = postgres
"""
        )
        if self._user is not None:
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _wait_accepting(self) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "pgbouncer.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module", params=MODES)
def bouncer(request: pytest.FixtureRequest, pg_server: SessionPostgres) -> Iterator[Bouncer]:
    binary = _pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed and could not be (apt-get install pgbouncer)")
    handle = Bouncer(binary, pg_server.server.port, request.param).start()
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def bounced_url(bouncer: Bouncer, database_url: str) -> str:
    """The test's database, through pgbouncer."""
    return bouncer.url(database_url.rsplit("/", 1)[1])


def bounced_settings(bouncer: Bouncer, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "pgbouncer": bouncer.mode,
        "statement_timeout": 0.5,
        "idle_in_transaction_timeout": 1.0,
        "statement_deadline": 30.0,  # the server's limits must act, not the client's
        "pool_min_size": 1,
        "pool_max_size": 2,
        "retry_attempts": 1,
        "startup_wait": 5,
    }
    return load_settings(**{**base, **overrides})


def test_an_app_enqueues_and_a_worker_runs_its_job_through_pgbouncer(
    bouncer: Bouncer, bounced_url: str, probe: Probe
) -> None:
    app = App(database_url=bounced_url, pgbouncer=bouncer.mode, **FAST_SETTINGS)
    try:
        app.migrate()

        @app.task(name="double")
        def double(n: int) -> int:
            return n * 2

        job = double.enqueue(21)
        batch = app.enqueue_many([double.job(n) for n in range(3)])  # a COPY in a transaction
        with running_worker(app):
            done = probe.wait_state(job, "succeeded", timeout=30)
            results = [probe.wait_state(j, "succeeded", timeout=30)["result"] for j in batch]
        assert done["result"] == 42
        assert results == [0, 2, 4]
    finally:
        app.close()


def sleep_after_a_first_statement(pool: RolePool) -> None:
    with pool.transaction() as conn:
        conn.execute("SELECT 1")
        conn.execute("SELECT pg_sleep(5)")


def copy_out_slowly(pool: RolePool) -> None:
    with (
        pool.connection() as conn,
        conn.cursor() as cur,
        cur.copy("COPY (SELECT pg_sleep(5)) TO STDOUT") as copy,
    ):
        for _ in copy:
            pass


def test_statement_timeout_is_in_force_in_and_out_of_transactions(
    bouncer: Bouncer, bounced_url: str
) -> None:
    with RolePool("api", bounced_url, bounced_settings(bouncer)) as pool:
        with pool.transaction() as conn:
            shown = conn.execute(
                "SELECT current_setting('statement_timeout'),"
                " current_setting('idle_in_transaction_session_timeout'),"
                " current_setting('synchronous_commit')"
            ).fetchone()
            assert shown == ("500ms", "1s", "on")
        with pytest.raises(psycopg.errors.QueryCanceled), pool.connection() as conn:
            conn.execute("SELECT pg_sleep(5)")  # a single statement, in autocommit
        with pytest.raises(psycopg.errors.QueryCanceled):
            sleep_after_a_first_statement(pool)
        with pytest.raises(psycopg.errors.QueryCanceled):
            copy_out_slowly(pool)  # COPY cannot share a pipeline: it goes its own way
        with pool.connection() as conn:  # the pool is fine afterwards
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_async_pools_settings_are_in_force(bouncer: Bouncer, bounced_url: str) -> None:
    async def main() -> tuple[Any, ...] | None:
        db = AsyncDatabase(bounced_url, bounced_settings(bouncer))
        pool = db.pool("worker")
        await db.open()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                async with pool.connection() as conn:
                    await conn.execute("SELECT pg_sleep(5)")

            async def shown(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
                cur = await conn.execute("SHOW statement_timeout")
                return await cur.fetchone()

            return await pool.run(shown)
        finally:
            await db.close()

    assert asyncio.run(main()) == ("500ms",)


def idle_in_a_transaction_until_the_server_ends_it(pool: RolePool, admin: Probe) -> None:
    with pool.transaction() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        wait_until(
            lambda: not admin.rows("SELECT 1 FROM pg_stat_activity WHERE pid = %s", row),
            timeout=30,
            what="the server to end the session idle in its transaction",
        )
        conn.execute("SELECT 1")


def test_a_session_idle_in_its_transaction_is_ended_by_the_server(
    bouncer: Bouncer, bounced_url: str, database_url: str
) -> None:
    admin = Probe(database_url)
    try:
        with RolePool("api", bounced_url, bounced_settings(bouncer)) as pool:
            with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
                idle_in_a_transaction_until_the_server_ends_it(pool, admin)
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        admin.close()


def test_settings_do_not_outlive_unbroken_sessions_on_shared_server_connections(
    bouncer: Bouncer, bounced_url: str
) -> None:
    """In transaction mode another client may get the server connection next: nothing
    unbroken sets may stay on it (in session mode PgBouncer's DISCARD ALL sees to it)."""
    with RolePool("api", bounced_url, bounced_settings(bouncer)) as pool:
        for _ in range(5):
            with pool.transaction() as conn:
                conn.execute("SELECT 1")
            with pool.connection() as conn:
                conn.execute("SELECT 1")
    with psycopg.connect(bounced_url, autocommit=True) as other:
        for _ in range(5):
            assert other.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_the_startup_probe_and_the_listener_connect_through_pgbouncer(
    bouncer: Bouncer, bounced_url: str, database_url: str
) -> None:
    settings = bounced_settings(bouncer)
    wait_until_reachable(bounced_url, settings)
    if not settings.uses_listen():
        assert bouncer.mode == "transaction"  # LISTEN does not work there: polling only
        return

    async def main() -> None:
        woken = asyncio.Event()
        notifier = Notifier(bounced_url, settings, ["default"], woken.set, queries())
        task = asyncio.create_task(notifier.run())
        try:
            await asyncio.wait_for(notifier.connected.wait(), 30)
            woken.clear()  # the wake every (re)connect makes
            channel = f"{settings.schema_name}.jobs"
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute("SELECT pg_notify(%s, 'default')", [channel])
            await asyncio.wait_for(woken.wait(), 30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_without_the_setting_pgbouncer_is_named_at_once(bouncer: Bouncer, bounced_url: str) -> None:
    settings = bounced_settings(bouncer, pgbouncer="off", startup_wait=60)
    with pytest.raises(ConfigError, match="UNBROKEN_PGBOUNCER"):
        wait_until_reachable(bounced_url, settings)


POLL_SECONDS = 30.0  # longer than any wait below: a job run sooner was woken, not polled


@pytest.mark.parametrize(
    "direct_listener",
    [
        True,
        pytest.param(
            False,
            marks=pytest.mark.xfail(
                strict=True, reason="without a direct listener a worker waits for its poll"
            ),
        ),
    ],
    ids=["listen-url", "polling-only"],
)
def test_a_direct_listener_wakes_a_worker_in_transaction_mode(
    bouncer: Bouncer, bounced_url: str, database_url: str, probe: Probe, direct_listener: bool
) -> None:
    """UNBROKEN_LISTEN_URL bypasses PgBouncer for the listener alone: a job enqueued while
    the worker idles runs long before its next poll, and the leader's row names the
    session lock. Without it (polling only, the last case, expected to fail) the wait for
    the job runs out."""
    if bouncer.mode != "transaction":
        pytest.skip("in session mode the listener goes through PgBouncer already")
    listen_url = database_url if direct_listener else None
    app = App(
        database_url=bounced_url,
        pgbouncer="transaction",
        listen_url=listen_url,
        **{**FAST_SETTINGS, "poll_interval": POLL_SECONDS},
    )
    try:
        app.migrate()

        @app.task(name="double")
        def double(n: int) -> int:
            return n * 2

        with running_worker(app):
            probe.wait_fetching_idle()  # looked once at start-up; now waits to be woken
            job = double.enqueue(21)
            wait_until(
                lambda: probe.state(job) == "succeeded",
                timeout=POLL_SECONDS / 3,
                what=f"job {job} woken and run before the {POLL_SECONDS:g} s poll",
            )
            # The leader's row names the lock its direct session holds: a dead leader is
            # then replaced within one try, not after its term.
            wait_until(
                lambda: probe.value("SELECT lock_key FROM unbroken.leaders"),
                timeout=10,
                what="the leader's row to name its listener session's lock",
            )
    finally:
        app.close()
