"""The error classifier, fed the exceptions a real server raises."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool, PoolTimeout

from pg import Faults
from unbroken.db.classify import ErrorKind, classify, is_transient


def raised(action: Callable[[], Any]) -> BaseException:
    try:
        action()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an error")


@pytest.fixture
def conn(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, n int CHECK (n >= 0))")
        yield c


@pytest.mark.parametrize(
    "statement",
    [
        "SELEC 1",  # syntax
        "SELECT * FROM missing_table",  # undefined object
        "INSERT INTO t VALUES (1, -1)",  # check constraint
        "SELECT 1/0",  # data error
        "SELECT 'x'::int",  # invalid text representation
    ],
)
def test_statement_and_data_errors_are_permanent(conn: Any, statement: str) -> None:
    exc = raised(lambda: conn.execute(statement))
    assert classify(exc) is ErrorKind.PERMANENT
    assert not is_transient(exc)


def test_unique_violation_is_permanent(conn: Any) -> None:
    conn.execute("INSERT INTO t VALUES (1, 1)")
    exc = raised(lambda: conn.execute("INSERT INTO t VALUES (1, 1)"))
    assert classify(exc) is ErrorKind.PERMANENT


def test_terminated_backend_is_a_connection_error(conn: Any, faults: Faults) -> None:
    pid = conn.info.backend_pid
    with psycopg.connect(faults.pg.admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    exc = raised(lambda: conn.execute("SELECT 1"))
    assert classify(exc) is ErrorKind.CONNECTION


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_is_a_connection_error(conn: Any, faults: Faults, mode: Any) -> None:
    faults.restart(mode)
    exc = raised(lambda: conn.execute("SELECT 1"))
    assert classify(exc) is ErrorKind.CONNECTION


def test_server_down_is_a_connection_error(database_url: str, faults: Faults) -> None:
    faults.stop()
    exc = raised(lambda: psycopg.connect(database_url, connect_timeout=2))
    assert classify(exc) is ErrorKind.CONNECTION


def test_idle_in_transaction_timeout_is_a_connection_error(conn: Any) -> None:
    conn.execute("SET idle_in_transaction_session_timeout = 100")
    conn.execute("BEGIN")
    threading.Event().wait(0.5)
    exc = raised(lambda: conn.execute("SELECT 1"))
    assert classify(exc) is ErrorKind.CONNECTION


def test_too_many_connections_is_transient(database_url: str, conn: Any) -> None:
    # Superusers bypass connection limits, so use a role that has none left.
    conn.execute("DROP ROLE IF EXISTS crowded")
    conn.execute("CREATE ROLE crowded LOGIN CONNECTION LIMIT 0")
    try:
        url = database_url.replace("postgres@", "crowded@")
        exc = raised(lambda: psycopg.connect(url))
        assert isinstance(exc, psycopg.OperationalError)
        assert "too many connections" in str(exc)
        assert is_transient(exc)
    finally:
        conn.execute("DROP ROLE crowded")


def test_lock_timeout_and_statement_timeout_are_conflicts(database_url: str, conn: Any) -> None:
    conn.execute("INSERT INTO t VALUES (1, 1)")
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        conn.execute("SET lock_timeout = 50")
        exc = raised(lambda: conn.execute("UPDATE t SET n = 2 WHERE id = 1"))
        assert isinstance(exc, psycopg.errors.LockNotAvailable)
        assert classify(exc) is ErrorKind.CONFLICT
        conn.execute("SET lock_timeout = 0")
        conn.execute("SET statement_timeout = 50")
        exc = raised(lambda: conn.execute("SELECT pg_sleep(1)"))
        assert isinstance(exc, psycopg.errors.QueryCanceled)
        assert classify(exc) is ErrorKind.CONFLICT


def test_serialization_failure_is_a_conflict(database_url: str, conn: Any) -> None:
    conn.execute("INSERT INTO t VALUES (1, 1)")
    with psycopg.connect(database_url) as a, psycopg.connect(database_url) as b:
        for c in (a, b):
            c.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            c.execute("SELECT sum(n) FROM t")
        a.execute("UPDATE t SET n = n + 1")
        a.commit()
        exc = raised(lambda: b.execute("UPDATE t SET n = n + 1"))
    assert isinstance(exc, psycopg.errors.SerializationFailure)
    assert classify(exc) is ErrorKind.CONFLICT


def test_deadlock_is_a_conflict(database_url: str, conn: Any) -> None:
    conn.execute("INSERT INTO t VALUES (1, 1), (2, 2)")
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def cross(first: int, second: int) -> None:
        with psycopg.connect(database_url) as c:
            c.execute("UPDATE t SET n = n + 1 WHERE id = %s", [first])
            barrier.wait()
            try:
                c.execute("UPDATE t SET n = n + 1 WHERE id = %s", [second])
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=cross, args=p) for p in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 1
    assert isinstance(errors[0], psycopg.errors.DeadlockDetected)
    assert classify(errors[0]) is ErrorKind.CONFLICT


def test_pool_timeout_is_transient(database_url: str) -> None:
    pool = ConnectionPool(database_url, min_size=1, max_size=1, timeout=0.2, open=True)
    try:
        with pool.connection():
            exc = raised(lambda: pool.getconn())
    finally:
        pool.close()
    assert isinstance(exc, PoolTimeout)
    assert classify(exc) is ErrorKind.CONNECTION
