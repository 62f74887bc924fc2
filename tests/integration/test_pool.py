"""The connection layer against a real server and real faults."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, Connection
from psycopg_pool import PoolClosed, PoolTimeout

from pg import Faults
from unbroken import App
from unbroken.db._async.pool import AsyncDatabase
from unbroken.db._sync.pool import Database, RolePool
from unbroken.errors import DatabaseUnavailable, StatementDeadline, UnitOfWorkFailed
from unbroken.settings import Settings, load_settings


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "pool_min_size": 2,
        "pool_max_size": 4,
        "startup_wait": 30,
        "startup_backoff_base": 0.2,
        "startup_backoff_cap": 1,
        "retry_backoff_base": 0.05,
        "retry_backoff_cap": 0.5,
        "pool_acquire_timeout": 10,
    }
    return load_settings(**{**base, **overrides})


@pytest.fixture
def table(database_url: str) -> str:
    # Our pools search pg_catalog and unbroken's schema only (docs/security.md): the tests'
    # own tables are named with their schema.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")  # survive an immediate restart
        conn.execute("CREATE TABLE public.items (id int PRIMARY KEY, note text)")
    return database_url


def test_server_down_at_start_pool_opens_when_it_comes_back(
    database_url: str, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    faults.stop()
    faults.stop_for_in_background(0, delay=5.0)  # start again 5 s from now
    caplog.set_level(logging.WARNING, "unbroken.db")
    started = time.monotonic()
    with RolePool("api", database_url, settings()) as pool, pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert time.monotonic() - started >= 4.5  # it really waited for the server
    attempts = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
    assert attempts
    assert "(attempt 1/" in attempts[0]
    assert "retrying in" in attempts[0]


def test_unreachable_for_the_whole_wait_fails_with_one_clear_error(faults: Faults) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
    with pytest.raises(DatabaseUnavailable) as err:
        RolePool("api", url, settings(startup_wait=1)).open()
    assert "host 127.0.0.1 port 1 database nowhere" in str(err.value)


def test_terminated_mid_transaction_the_unit_of_work_is_retried_exactly_once(
    table: str, faults: Faults
) -> None:
    tries = []

    def work(conn: Connection[Any]) -> int:
        tries.append(1)
        conn.execute("INSERT INTO public.items VALUES (1, 'once')")
        if len(tries) == 1:
            # Kill our own session while the insert is uncommitted.
            faults.terminate_backends("unbroken:api")
        return len(tries)

    with RolePool("api", table, settings()) as pool:
        assert pool.run(work) == 2
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (1,)


def test_permanent_error_is_not_retried(table: str) -> None:
    calls = []

    def work(conn: Connection[Any]) -> None:
        calls.append(1)
        conn.execute("INSERT INTO public.items VALUES (1, 'a'), (1, 'b')")

    with RolePool("api", table, settings()) as pool, pytest.raises(psycopg.errors.UniqueViolation):
        pool.run(work)
    assert calls == [1]


def test_transient_errors_past_the_limit_give_one_final_error(table: str, faults: Faults) -> None:
    def work(conn: Connection[Any]) -> None:
        faults.terminate_backends("unbroken:api")
        conn.execute("SELECT 1")

    with (
        RolePool("api", table, settings(retry_attempts=3)) as pool,
        pytest.raises(UnitOfWorkFailed) as err,
    ):
        pool.run(work)
    assert err.value.attempts == 3
    assert isinstance(err.value.__cause__, psycopg.OperationalError)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restarted_mid_run_the_next_unit_succeeds(
    table: str, faults: Faults, mode: Any
) -> None:
    with RolePool("api", table, settings(pool_min_size=4)) as pool:
        pool.run(lambda c: c.execute("INSERT INTO public.items VALUES (1, 'before')"))
        faults.restart(mode)
        pool.run(lambda c: c.execute("INSERT INTO public.items VALUES (2, 'after')"))
        with pool.connection() as conn:
            rows = conn.execute("SELECT id FROM public.items ORDER BY id").fetchall()
        assert rows in ([(1,), (2,)], [(2,)])  # immediate stop may lose an unsynced commit
        assert pool.stats().reconnects >= 1  # one flush replaced every stale connection


def test_connection_handed_back_inside_a_transaction_is_rolled_back_and_named(
    table: str, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "unbroken.db")
    with RolePool("api", table, settings()) as pool:
        with pool.connection() as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO public.items VALUES (1, 'lost')")
        assert pool.stats().dirty_returns == 1
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM public.items").fetchone() == (0,)
        assert not faults.idle_in_transaction()
    warning = next(
        r.getMessage() for r in caplog.records if "inside a transaction" in r.getMessage()
    )
    assert "test_pool.py" in warning
    assert "test_connection_handed_back_inside_a_transaction" in warning


def test_transaction_scope_commits_or_rolls_back(table: str) -> None:
    with RolePool("api", table, settings()) as pool:
        with pool.transaction() as conn:
            conn.execute("INSERT INTO public.items VALUES (1, 'kept')")

        def failing() -> None:
            with pool.transaction() as conn:
                conn.execute("INSERT INTO public.items VALUES (2, 'dropped')")
                raise RuntimeError("user code failed")

        with pytest.raises(RuntimeError):
            failing()
        with pool.connection() as conn:
            assert conn.execute("SELECT id FROM public.items").fetchall() == [(1,)]
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_named_pools_do_not_starve_each_other(database_url: str) -> None:
    db = Database(database_url, settings(pool_acquire_timeout=0.5))
    worker = db.pool("worker", min_size=1, max_size=2)
    api = db.pool("api", min_size=1, max_size=2)
    db.open()
    try:
        with worker.connection(), worker.connection():
            with pytest.raises(PoolTimeout), worker.connection():  # the worker pool is exhausted...
                pass
            with api.connection() as conn:  # ...and the api pool does not care
                assert conn.execute("SELECT 1").fetchone() == (1,)
        stats = {s.role: s for s in db.stats()}
        assert stats["worker"].errors >= 1
        assert stats["worker"].max_size == 2
        assert stats["api"].errors == 0
    finally:
        db.close()


def test_stale_idle_connections_are_flushed_at_once(database_url: str, faults: Faults) -> None:
    with RolePool("api", database_url, settings(pool_min_size=4)) as pool:
        conns = [pool._pool.getconn() for _ in range(4)]  # make sure all four are open
        for c in conns:
            pool._pool.putconn(c)
        faults.restart("fast")
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        stats = pool.stats()
        assert stats.reconnects == 1  # one flush, not one failed checkout per connection
        assert stats.connections_lost >= 3


def test_statement_deadline_ends_a_blackholed_query(database_url: str, pg_server: Any) -> None:
    from proxy import Proxy

    dbname = database_url.rsplit("/", 1)[1]
    proxy = Proxy("127.0.0.1", pg_server.server.port).start()
    try:
        s = settings(statement_deadline=1.0, pool_min_size=1, retry_attempts=1)
        with RolePool("api", proxy.url(dbname), s) as pool:
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            proxy.blackhole()
            started = time.monotonic()
            with pytest.raises(StatementDeadline), pool.connection() as conn:
                conn.execute("SELECT 1")
            assert time.monotonic() - started < 10  # not forever
    finally:
        proxy.stop()


def test_statement_deadline_ends_a_blackholed_copy(database_url: str, pg_server: Any) -> None:
    """COPY does not go through execute(): the pools' cursors give it the deadline too, so
    a bulk enqueue or a chunk's COPY cannot hang on a dead network either."""
    from proxy import Proxy

    dbname = database_url.rsplit("/", 1)[1]
    proxy = Proxy("127.0.0.1", pg_server.server.port).start()
    try:
        s = settings(statement_deadline=1.0, pool_min_size=1, retry_attempts=1)
        with RolePool("api", proxy.url(dbname), s) as pool, pool.connection() as conn:
            conn.execute("CREATE TABLE public.copied (n int)")
            proxy.blackhole()
            with pytest.raises(StatementDeadline):  # noqa: SIM117 (the COPY block is the statement)
                with conn.cursor() as cur, cur.copy("COPY public.copied (n) FROM STDIN") as copy:
                    copy.write_row((1,))
    finally:
        proxy.stop()


def test_async_statement_deadline(database_url: str, pg_server: Any) -> None:
    from proxy import Proxy

    dbname = database_url.rsplit("/", 1)[1]
    proxy = Proxy("127.0.0.1", pg_server.server.port).start()

    async def main() -> None:
        s = settings(statement_deadline=1.0, pool_min_size=1)
        db = AsyncDatabase(proxy.url(dbname), s)
        pool = db.pool("worker")
        await db.open()
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                proxy.blackhole()
                with pytest.raises(StatementDeadline):
                    await conn.execute("SELECT pg_sleep(0)")
        finally:
            proxy.heal()
            await db.close()

    try:
        asyncio.run(main())
    finally:
        proxy.stop()


def test_async_unit_of_work_survives_a_restart(table: str, faults: Faults) -> None:
    async def main() -> list[tuple[int]]:
        db = AsyncDatabase(table, settings())
        pool = db.pool("worker")
        await db.open()
        try:

            async def insert(conn: AsyncConnection[Any]) -> None:
                await conn.execute(
                    "INSERT INTO public.items VALUES (7, 'async') ON CONFLICT DO NOTHING"
                )

            await pool.run(insert)
            restarter = threading.Thread(target=faults.restart, args=("fast",))
            restarter.start()
            restarter.join()
            await pool.run(insert)

            async def read(conn: AsyncConnection[Any]) -> list[tuple[int]]:
                return await (await conn.execute("SELECT id FROM public.items")).fetchall()

            return await pool.run(read)
        finally:
            await db.close()

    assert asyncio.run(main()) == [(7,)]


def test_no_session_is_left_idle_in_transaction(table: str, faults: Faults) -> None:
    with RolePool("api", table, settings()) as pool:
        for i in range(20):
            try:
                with pool.transaction() as conn:
                    conn.execute("INSERT INTO public.items VALUES (%s, 'x')", [i % 5])
            except psycopg.errors.UniqueViolation:
                pass
        assert faults.idle_in_transaction() == []


@pytest.mark.parametrize("check_after", [60.0, 0.0], ids=["socket-look", "round-trip"])
def test_a_checkout_hands_out_only_live_connections(
    database_url: str, pg_server: Any, faults: Faults, check_after: float
) -> None:
    """A connection back healthy a moment ago is handed out on a look at its socket (no
    bytes sent); one whose backend has gone since is not handed out either way."""
    from proxy import Proxy

    dbname = database_url.rsplit("/", 1)[1]
    proxy = Proxy("127.0.0.1", pg_server.server.port).start()
    try:
        s = settings(pool_min_size=1, pool_max_size=1, pool_check_after=check_after)
        with RolePool("liveness", proxy.url(dbname), s) as pool:
            with pool.connection() as conn:
                first_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            sent = proxy.bytes_to_server
            for _ in range(20):
                with pool.connection():
                    pass
            if check_after:
                assert proxy.bytes_to_server == sent  # not one round trip
            else:
                assert proxy.bytes_to_server > sent  # a round trip each
            assert faults.terminate_backends("unbroken:liveness") == 1
            with pool.connection() as conn:
                second_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert second_pid != first_pid
            assert pool.stats().reconnects == 1  # the dead one was noticed at checkout
    finally:
        proxy.stop()


def test_callers_waiting_through_a_7_s_outage_are_served_when_it_ends(
    table: str, faults: Faults
) -> None:
    """Issue 11 item 7: callers blocked in connection() and run() while the server is down
    for 7 s, with an acquire timeout longer than that, get a connection once it is back.
    (psycopg_pool gave up its reconnect series after 6 s and then nobody reconnected until
    a new checkout: the waiting callers timed out.)"""
    s = settings(pool_min_size=2, pool_max_size=2, pool_acquire_timeout=15, retry_attempts=1)
    with RolePool("api", table, s) as pool:
        pool.run(lambda c: c.execute("INSERT INTO public.items VALUES (0, 'before')"))
        faults.stop_for_in_background(7.0)  # down when this returns
        outcomes: dict[str, object] = {}

        def by_run() -> None:
            try:
                pool.run(lambda c: c.execute("INSERT INTO public.items VALUES (1, 'run')"))
                outcomes["run"] = "ok"
            except Exception as exc:
                outcomes["run"] = exc

        def by_connection() -> None:
            try:
                with pool.connection() as conn:
                    outcomes["connection"] = conn.execute("SELECT 2").fetchone()
            except Exception as exc:
                outcomes["connection"] = exc

        callers = [threading.Thread(target=by_run), threading.Thread(target=by_connection)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=60)
        assert outcomes == {"run": "ok", "connection": (2,)}
        with pool.connection() as conn:
            assert conn.execute("SELECT note FROM public.items WHERE id = 1").fetchone() == ("run",)


def test_async_callers_waiting_through_a_7_s_outage_are_served_when_it_ends(
    table: str, faults: Faults
) -> None:
    async def main() -> list[object]:
        s = settings(pool_min_size=1, pool_max_size=2, pool_acquire_timeout=15, retry_attempts=1)
        db = AsyncDatabase(table, s)
        pool = db.pool("worker")
        await db.open()
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            await asyncio.to_thread(faults.stop_for_in_background, 7.0)

            async def by_run(conn: AsyncConnection[Any]) -> object:
                return await (await conn.execute("SELECT 1")).fetchone()

            async def by_connection() -> object:
                async with pool.connection() as conn:
                    return await (await conn.execute("SELECT 2")).fetchone()

            return await asyncio.gather(pool.run(by_run), by_connection(), return_exceptions=True)
        finally:
            await db.close()

    assert asyncio.run(main()) == [(1,), (2,)]


def test_a_pool_handed_out_after_the_database_opened_opens_on_first_use(
    database_url: str,
) -> None:
    """`app.database().pool("metrics")` (docs/metrics.md) is a new role on an open Database:
    its first use opens it, rather than raising PoolClosed; one closed stays closed."""
    app = App(database_url=database_url)
    try:
        pool = app.database().pool("metrics")
        assert pool.run(lambda conn: conn.execute("SELECT 1").fetchone(), transaction=False) == (1,)
        with pool.connection() as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
    finally:
        app.close()
    with pytest.raises(PoolClosed), pool.connection():
        pass


def test_an_async_pool_handed_out_after_the_database_opened_opens_on_first_use(
    database_url: str,
) -> None:
    async def main() -> None:
        app = App(database_url=database_url)
        try:
            pool = (await app.adatabase()).pool("metrics")
            async with pool.connection() as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        finally:
            await app.aclose()
        with pytest.raises(PoolClosed):
            async with pool.connection():
                pass

    asyncio.run(main())
