"""The test-session server and the Faults handle do what they say."""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
import pytest
from psycopg import errors

from pg import Faults, SessionPostgres, wait_until_accepting


def start_time(url: str) -> datetime:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_session_server_runs_with_the_test_settings(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [["fsync", "max_connections", "shared_preload_libraries"]],
            ).fetchall()
        )
        assert conn.info.host == "127.0.0.1"
        assert conn.info.dbname.startswith("test_")
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        ).fetchone()
    assert settings == {
        "fsync": "off",
        "max_connections": "300",
        "shared_preload_libraries": "pg_stat_statements",
    }
    assert tables == (0,)


def test_databases_are_fresh_and_dropped_even_while_connected(pg_server: SessionPostgres) -> None:
    first, second = pg_server.create_database(), pg_server.create_database()
    assert first != second
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (x int)")
        pg_server.drop_database(first)  # WITH (FORCE): our open session does not stop it
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with psycopg.connect(pg_server.admin_url) as admin:
        names = {r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()}
    assert first.rsplit("/", 1)[1] not in names
    assert second.rsplit("/", 1)[1] in names
    pg_server.drop_database(second)


def test_fast_restart_ends_sessions_with_admin_shutdown(faults: Faults, database_url: str) -> None:
    before = start_time(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        faults.restart("fast")
        with pytest.raises(errors.AdminShutdown):
            conn.execute("SELECT 1")
    assert start_time(database_url) > before


def test_immediate_restart_drops_sessions_and_recovers(faults: Faults, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # the session server runs with synchronous_commit=off: a crash can lose the last
        # ~200 ms of commits, so a test about durability must turn it back on
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1)")
        pid_before = faults.server.pid()
        faults.restart("immediate")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert faults.server.pid() not in (None, pid_before)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]


def test_stop_for_keeps_the_server_down_that_long(faults: Faults, database_url: str) -> None:
    started = time.monotonic()
    faults.stop_for(0.5)
    assert time.monotonic() - started >= 0.5
    assert start_time(database_url) is not None


def test_stop_for_in_background_is_down_at_return_and_back_later(
    faults: Faults, database_url: str
) -> None:
    started = time.monotonic()
    thread = faults.stop_for_in_background(1.0)
    assert not faults.server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(database_url, connect_timeout=2).close()
    wait_until_accepting(database_url, timeout=15)  # the code under test retrying
    assert time.monotonic() - started >= 1.0
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_stop_for_in_background_with_delay_stops_later(faults: Faults, database_url: str) -> None:
    thread = faults.stop_for_in_background(0.3, delay=0.3)
    assert faults.server.is_running()
    saw_down = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not saw_down:
        saw_down = not faults.server.is_running()
        time.sleep(0.01)
    assert saw_down
    thread.join(timeout=10)
    assert faults.server.is_running()
    wait_until_accepting(database_url, timeout=5)


def test_terminate_backends_hits_only_the_named_application(
    faults: Faults, database_url: str
) -> None:
    with (
        psycopg.connect(database_url, application_name="victim") as victim,
        psycopg.connect(database_url, application_name="bystander", autocommit=True) as other,
    ):
        victim.execute("CREATE TABLE lost (x int)")  # inside the victim's open transaction
        assert faults.terminate_backends("victim") == 1
        with pytest.raises(errors.AdminShutdown):
            victim.execute("SELECT 1")
        assert victim.closed
        assert other.execute("SELECT 1").fetchone() == (1,)
        exists = other.execute("SELECT to_regclass('lost') IS NOT NULL").fetchone()
        assert exists == (False,)  # the victim's transaction was rolled back
    assert faults.terminate_backends("nobody-has-this-name") == 0


def test_terminate_all_backends_spares_nothing_but_itself(
    faults: Faults, database_url: str
) -> None:
    with psycopg.connect(database_url) as a, psycopg.connect(database_url) as b:
        assert faults.terminate_backends() >= 2
        for conn in (a, b):
            with pytest.raises(errors.AdminShutdown):
                conn.execute("SELECT 1")


def test_activity_and_idle_in_transaction(faults: Faults, database_url: str) -> None:
    with psycopg.connect(database_url, application_name="idler") as conn:
        conn.execute("SELECT 42")  # opens a transaction and leaves it idle
        rows = faults.idle_in_transaction("idler")
        assert [r["pid"] for r in rows] == [conn.info.backend_pid]
        assert rows[0]["state"] == "idle in transaction"
        assert rows[0]["xact_start"] is not None
        assert rows[0]["query"] == "SELECT 42"
        conn.rollback()
        assert faults.idle_in_transaction("idler") == []
        assert [r["state"] for r in faults.activity("idler")] == ["idle"]


def test_finish_brings_a_stopped_server_back(pg_server: SessionPostgres) -> None:
    handle = Faults(pg_server)
    handle.stop("immediate")
    assert not pg_server.server.is_running()
    handle.finish()
    assert pg_server.server.is_running()
    wait_until_accepting(pg_server.admin_url, timeout=1)
