"""The database side of issue 12, on a real server with real roles.

- A role that may create objects in `public` plants functions there that our queries would
  pick over the built-in ones under the default search_path ("$user", public); enqueue,
  the worker and a chunked job must never call them.
- The least-privilege roles of docs/security.md, created from its SQL blocks as written:
  the migrator migrates with no privilege on the database, the worker role enqueues and
  runs jobs, the dashboard role reads; what they may not do fails with a clear error.
- Migrations need CREATE on an existing schema only, and warn about its owner.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from apps.harness import FAST_SETTINGS, Probe, running_worker, wait_until
from ops_seed import seed
from unbroken import App, AsyncChunk, Permanent, Task, arun_chunks, migrations
from unbroken.db._sync.pool import Database
from unbroken.db.conninfo import connection_kwargs, session_statement, transaction_statement
from unbroken.errors import MigrationError
from unbroken.ops.filters import JobFilter
from unbroken.ops.store import OperatorStore
from unbroken.settings import load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


@dataclass
class Roles:
    """Login roles made for one test (roles belong to the cluster: each test names its own)."""

    admin_url: str
    prefix: str
    made: list[str]

    def name(self, kind: str) -> str:
        return f"{self.prefix}_{kind}"

    def url(self, kind: str) -> str:
        return make_conninfo(self.admin_url, user=self.name(kind))

    def create(self, *kinds: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for kind in kinds:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(self.name(kind)))
                )
                self.made.append(self.name(kind))

    def admin(self, statements: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(self.rename(statements).encode())

    def rename(self, text: str) -> str:
        """docs/security.md's role names, as this test's roles."""
        return re.sub(
            r"\b(unbroken|app)_(migrator|worker|dashboard|owner)\b", rf"{self.prefix}_\2", text
        )


@pytest.fixture
def roles(database_url: str) -> Iterator[Roles]:
    made: list[str] = []
    handle = Roles(database_url, database_url.rsplit("/", 1)[1], made)
    yield handle
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        for name in made:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def docs_block(marker: str) -> str:
    """The ```sql block that follows `<!-- marker` in docs/security.md."""
    text = DOCS.read_text()
    found = re.search(rf"<!-- {re.escape(marker)}\b[^\n]*-->\n```sql\n(.*?)```", text, re.S)
    assert found, f"no {marker} block in {DOCS}"
    return found[1]


# --- objects planted in public --------------------------------------------------------------
# Each is a better match than the built-in for a call in our SQL, under the default
# search_path: exact argument types beat pg_catalog's polymorphic (anyarray), variadic
# ("any") or implicitly cast candidates. Each records its call and then does the real work,
# so nothing else changes.
PLANTED = {
    # the fetch: unnest(%(queues)s::text[])
    "unnest(text[])": ("SETOF text", "SELECT pg_catalog.unnest($1)"),
    # lease renewals: cardinality(%(ids)s::bigint[])
    "cardinality(bigint[])": ("integer", "SELECT pg_catalog.cardinality($1)"),
    # enqueue_many's id reservation: generate_series(1, %(n)s), n sent as a smallint
    "generate_series(integer, smallint)": (
        "SETOF integer",
        "SELECT pg_catalog.generate_series($1, $2::integer)",
    ),
    # a failed attempt's error record: jsonb_build_array(o.error)
    "jsonb_build_array(jsonb)": ("jsonb", "SELECT pg_catalog.jsonb_build_array($1)"),
    # a chunk's commit: jsonb_build_object('checkpoint_at', clock_timestamp())
    "jsonb_build_object(text, timestamptz)": (
        "jsonb",
        "SELECT pg_catalog.jsonb_build_object($1, $2)",
    ),
}


# What the operator store's SQL (sql/admin.sql) calls with argument types a plant in public
# matches better; the store may run on the caller's connection, with the caller's path.
PLANTED_FOR_OPS = {
    # stats_series (the dashboard's charts): to_timestamp(floor(...) * bucket) is numeric
    "to_timestamp(numeric)": ("timestamptz", "SELECT pg_catalog.to_timestamp($1::float8)"),
    # queue_list: each priority's backlog, jsonb_build_object(variadic "any")
    "jsonb_build_object(text, smallint, text, bigint, text, double precision)": (
        "jsonb",
        "SELECT pg_catalog.jsonb_build_object($1, $2, $3, $4, $5, $6)",
    ),
}


def plant(roles: Roles, planted: dict[str, tuple[str, str]] = PLANTED) -> None:
    roles.create("attacker")
    roles.admin(
        "GRANT CREATE ON SCHEMA public TO unbroken_attacker".replace("unbroken", roles.prefix)
    )
    with psycopg.connect(roles.url("attacker"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.hits (fn text NOT NULL, by_role text DEFAULT current_user)"
        )
        conn.execute("GRANT INSERT, SELECT ON public.hits TO PUBLIC")
        for signature, (returns, body) in planted.items():
            name = signature.split("(")[0]
            conn.execute(
                f"CREATE FUNCTION public.{signature} RETURNS {returns} LANGUAGE sql AS $$ "
                f"INSERT INTO public.hits (fn) VALUES ('{name}'); {body} $$".encode()
            )


def hits(probe: Probe) -> list[str]:
    return [r["fn"] for r in probe.rows("SELECT fn FROM public.hits ORDER BY fn")]


def test_the_planted_functions_would_be_picked_with_the_default_search_path(
    database_url: str, roles: Roles, probe: Probe
) -> None:
    """The premise of the next test: each plant shadows the built-in for an ordinary session."""
    plant(roles)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        conn.execute("SELECT * FROM unnest(%s::text[])", [["a"]])
        conn.execute("SELECT cardinality(%s::bigint[])", [[1]])
        conn.execute("SELECT generate_series(1, %s)", [3])
        conn.execute("SELECT jsonb_build_array(%s::jsonb)", ["{}"])
        conn.execute("SELECT jsonb_build_object('at', clock_timestamp())")
    assert hits(probe) == sorted(name.split("(")[0] for name in PLANTED)


def app_with_tasks(url: str) -> tuple[App, Task[[int], int], Task[[], None]]:
    """An App (FAST_SETTINGS) with a task that succeeds and one that goes dead at once."""
    app = App(database_url=url, **FAST_SETTINGS)

    @app.task(name="sec.ok")
    def ok(n: int) -> int:
        return n

    @app.task(name="sec.fails", max_attempts=1)
    def fails() -> None:
        raise Permanent("no")

    return app, ok, fails


def test_enqueue_and_the_worker_never_call_objects_planted_in_public(
    database_url: str, roles: Roles, probe: Probe
) -> None:
    plant(roles)
    app, ok, fails = app_with_tasks(database_url)

    @app.task(name="sec.chunked", chunk_size=2)
    async def chunked() -> int:
        async def write(chunk: AsyncChunk[int]) -> None:
            return None

        done = await arun_chunks(list(range(5)), write)
        return done.processed

    try:
        app.migrate()
        ids = [ok.enqueue(1), fails.enqueue(), chunked.enqueue()]
        ids += app.enqueue_many([ok.job(n) for n in range(3)])  # COPY with reserved ids
        ids += app.enqueue_many([ok.using(unique_key=f"k{n}").job(n) for n in range(2)])
        with psycopg.connect(database_url, autocommit=True) as mine:  # the caller's session
            assert mine.execute("SHOW search_path").fetchone() == ('"$user", public',)
            ids.append(ok.using(conn=mine).enqueue(2))
            ids += app.enqueue_many([ok.job(n) for n in range(3)], conn=mine)
        with running_worker(app):
            for job_id in ids:
                probe.wait_state(job_id, ("succeeded", "dead"), timeout=30)
            beats = probe.value("SELECT heartbeat_at FROM unbroken.workers")
            wait_until(
                lambda: probe.value("SELECT heartbeat_at FROM unbroken.workers") != beats,
                timeout=10,
                what="a lease renewal",
            )
        assert probe.state(ids[1]) == "dead"
        assert probe.job(ids[2])["result"] == 5
    finally:
        app.close()
    assert sorted(set(hits(probe))) == []


def test_the_operator_store_on_a_callers_connection_never_calls_objects_planted_in_public(
    database_url: str, roles: Roles, probe: Probe
) -> None:
    """`OperatorStore(conn)` on the caller's own session (search_path "$user", public), in
    autocommit and inside the caller's transaction: the store's statements run with our
    search_path, and the caller's is as it was afterwards."""
    plant(roles, PLANTED_FOR_OPS)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        seed(conn)
        premise = conn.execute(
            "SELECT to_timestamp(floor(1.5::numeric) * 60::int),"
            " jsonb_build_object('a', 1::smallint, 'b', 2::bigint, 'c', 0.5::float8)"
        )
        assert premise.fetchone() is not None
    assert hits(probe) == ["jsonb_build_object", "to_timestamp"]  # the premise
    probe.rows("DELETE FROM public.hits")

    def use(store: OperatorStore) -> None:
        assert store.stats_series(window_s=600)
        assert any(q.priorities for q in store.queue_list())
        assert store.job_count(JobFilter.build(state="dead")) > 0
        store.job_retry([])

    with psycopg.connect(database_url, autocommit=True) as mine:
        use(OperatorStore(mine))
        assert mine.execute("SHOW search_path").fetchone() == ('"$user", public',)
    with psycopg.connect(database_url) as mine:
        mine.execute("SET LOCAL search_path = public, pg_catalog")  # the caller's own
        use(OperatorStore(mine))
        assert mine.execute("SHOW search_path").fetchone() == ("public, pg_catalog",)
        assert mine.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        mine.rollback()
        assert mine.execute("SHOW search_path").fetchone() == ('"$user", public',)
    assert hits(probe) == []


def test_every_session_of_ours_searches_the_catalog_and_our_schema_only(database_url: str) -> None:
    expected = "pg_catalog,unbroken,pg_temp"
    database = Database(database_url, load_settings(database_url=database_url))
    for role in ("api", "worker", "cli", "dashboard"):
        database.pool(role, min_size=0, max_size=1)
    database.open()
    try:
        for role in ("api", "worker", "cli", "dashboard"):
            with database.pool(role).connection() as conn:
                assert conn.execute("SHOW search_path").fetchone() == (expected,), role
    finally:
        database.close()
    tenant = load_settings(schema_name="tenant_b")
    options = connection_kwargs(tenant, role="worker")["options"]
    assert "-c search_path=pg_catalog,tenant_b,pg_temp" in options
    # behind PgBouncer the same value travels in a set_config() call
    for settings, statement in [
        (load_settings(pgbouncer="session"), session_statement),
        (load_settings(pgbouncer="transaction"), transaction_statement),
    ]:
        text = statement(settings, role="worker")
        assert text is not None
        assert b"'search_path', 'pg_catalog,unbroken,pg_temp'" in text
    # the chunk sessions run your statements: they keep your search_path
    chunks = connection_kwargs(load_settings(), role="chunks").get("options", "")
    assert "search_path" not in chunks


def test_every_function_in_the_schema_sets_its_own_search_path(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        loose = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc AS p"
            " WHERE p.pronamespace = 'unbroken'::regnamespace"
            " AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c"
            "                 WHERE c LIKE 'search\\_path=%%')"
        ).fetchall()
        assert conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'unbroken'::regnamespace"
        ).fetchone() != (0,)
    assert loose == []


# --- least privilege ------------------------------------------------------------------------
def test_least_privilege_roles_as_the_docs_create_them(
    database_url: str, roles: Roles, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    roles_sql = docs_block("roles.sql")
    created = re.findall(r"CREATE ROLE (\w+)", roles_sql)
    roles.made.extend(roles.rename(name) for name in created)
    roles.admin(roles_sql)
    dbname = database_url.rsplit("/", 1)[1]
    assert (
        probe.value(
            "SELECT has_database_privilege(%s, %s, 'CREATE')", [roles.name("migrator"), dbname]
        )
        is False
    )

    # the migrator: migrations apply with CREATE on the schema it owns, and no warning
    caplog.set_level(logging.WARNING, "unbroken.migrations")
    migrator = App(database_url=roles.url("migrator"), **FAST_SETTINGS)
    try:
        assert [m.version for m in migrator.migrate()] == [
            m.version for m in migrations.available()
        ]
    finally:
        migrator.close()
    assert not [r for r in caplog.records if "owned by" in r.getMessage()]

    # the worker role: enqueue every way, run jobs (and the leader's maintenance)
    worker_app, ok, fails = app_with_tasks(roles.url("worker"))
    try:
        ids = [ok.enqueue(1), fails.enqueue(), ok.using(unique_key="u").enqueue(2)]
        ids += worker_app.enqueue_many([ok.job(n) for n in range(3)])
        ids += worker_app.enqueue_many([ok.using(unique_key=f"k{n}").job(n) for n in range(2)])
        worker_app.cancel(ok.using(delay=3600).enqueue(9))
        with running_worker(worker_app):
            for job_id in ids:
                probe.wait_state(job_id, ("succeeded", "dead"), timeout=30)
            wait_until(
                lambda: probe.value("SELECT count(*) FROM unbroken.leaders"),
                timeout=30,
                what="a leader",
            )
        assert [probe.state(i) for i in ids].count("dead") == 1

        # what the worker role may not do
        with psycopg.connect(roles.url("worker"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute("CREATE TABLE unbroken.mine (x int)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner"):
                conn.execute("DROP TABLE unbroken.jobs")
        latest = migrations.available()[-1]
        probe.rows("DELETE FROM unbroken.migrations WHERE version = %s", [latest.version])
        try:
            fresh = App(database_url=roles.url("worker"))
            caplog.clear()
            with pytest.raises(MigrationError) as info:
                fresh.migrate()
            assert not caplog.records  # one error, no warning about the schema's owner first
            message = str(info.value)
            assert f"role {roles.name('worker')} may not migrate schema 'unbroken'" in message
            assert "unbroken db migrate" in message
            assert "\n" not in message
            fresh.close()
        finally:
            probe.rows(
                "INSERT INTO unbroken.migrations (version, name) VALUES (%s, %s)",
                [latest.version, latest.name],
            )
    finally:
        worker_app.close()

    # the dashboard role reads everything the operator views show, and changes nothing
    settings = load_settings(database_url=roles.url("dashboard"))
    database = Database(roles.url("dashboard"), settings)
    pool = database.pool("dashboard", min_size=0, max_size=1)
    database.open("dashboard")
    try:
        store = OperatorStore(pool)
        assert store.schema_version() == latest.version
        assert store.job_count(JobFilter.build(state="dead")) == 1
        assert store.job_list(JobFilter.build(state="succeeded"))
        assert store.queue_list()
        assert store.dead_letter_groups()
        assert store.task_stats()
        store.health_inputs()
        dead = ids[1]
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="permission denied for table jobs"
        ):
            store.job_retry([dead])
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="permission denied for table queues"
        ):
            store.queue_set_paused("default", True)
    finally:
        database.close()
    assert probe.state(ids[1]) == "dead"


def test_an_existing_installation_is_granted_as_the_docs_say(
    database_url: str, roles: Roles, probe: Probe
) -> None:
    """A schema migrated by the application's old role gets the worker and dashboard roles."""
    roles.create("owner", "worker", "dashboard")
    roles.admin(
        "GRANT CREATE ON DATABASE {db} TO app_owner".format(db=database_url.rsplit("/", 1)[1])
    )
    owner = App(database_url=roles.url("owner"))
    try:
        owner.migrate()
    finally:
        owner.close()
    roles.admin(docs_block("existing.sql"))
    app, ok, _ = app_with_tasks(roles.url("worker"))
    try:
        ids = [ok.enqueue(1), *app.enqueue_many([ok.job(n) for n in range(3)])]
        with running_worker(app):
            for job_id in ids:
                probe.wait_state(job_id, "succeeded", timeout=30)
    finally:
        app.close()
    with psycopg.connect(roles.url("dashboard"), autocommit=True) as conn:
        store = OperatorStore(conn)
        assert store.job_count(JobFilter.build(state="succeeded")) == len(ids)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            store.job_retry(ids[:1])


# --- migrations -----------------------------------------------------------------------------
def test_migrations_need_create_on_an_existing_schema_only_and_warn_of_its_owner(
    database_url: str, roles: Roles, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    roles.create("migrator")
    roles.admin(
        "CREATE SCHEMA unbroken;"  # owned by the admin, not by the migrator
        " GRANT USAGE, CREATE ON SCHEMA unbroken TO app_migrator"
    )
    caplog.set_level(logging.WARNING, "unbroken.migrations")
    app = App(database_url=roles.url("migrator"))
    try:
        applied = app.migrate()
    finally:
        app.close()
    assert [m.version for m in applied] == [m.version for m in migrations.available()]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "schema 'unbroken' is owned by role postgres" in w and roles.name("migrator") in w
        for w in warnings
    ), warnings
    assert probe.value("SELECT tableowner FROM pg_tables WHERE tablename = 'jobs'") == roles.name(
        "migrator"
    )


def test_a_role_that_may_not_create_in_the_schema_gets_a_migration_error(
    database_url: str, roles: Roles
) -> None:
    roles.create("migrator")
    roles.admin("CREATE SCHEMA unbroken; GRANT USAGE ON SCHEMA unbroken TO app_migrator")
    app = App(database_url=roles.url("migrator"))
    try:
        with pytest.raises(MigrationError, match="may not migrate schema 'unbroken'"):
            app.migrate()
    finally:
        app.close()


def test_a_missing_schema_without_create_on_the_database_names_the_remedy(
    database_url: str, roles: Roles
) -> None:
    roles.create("migrator")
    with (
        psycopg.connect(roles.url("migrator"), autocommit=True) as conn,
        pytest.raises(MigrationError, match="may not migrate schema 'unbroken'") as info,
    ):
        migrations.migrate(conn)
    assert "permission denied for database" in str(info.value)
