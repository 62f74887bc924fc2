from __future__ import annotations

from unbroken.db.conninfo import (
    connection_kwargs,
    describe_target,
    redact,
    session_statement,
    transaction_statement,
)
from unbroken.settings import load_settings


def test_redact_hides_passwords_in_urls_and_conninfo() -> None:
    assert redact("postgresql://app:s3cr3t@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert "s3cr3t" not in redact("host=db password=s3cr3t dbname=x")
    assert "it's" not in redact("host=db password='it''s' dbname=x")


def test_describe_target_never_shows_the_password() -> None:
    text = describe_target("postgresql://app:s3cr3t@db.internal:6432/orders")
    assert text == "host db.internal port 6432 database orders"


def test_every_connection_gets_keepalives_and_server_timeouts() -> None:
    kwargs = connection_kwargs(load_settings(statement_timeout=7), role="worker")
    assert kwargs["keepalives"] == 1
    assert kwargs["tcp_user_timeout"] > 0
    assert "statement_timeout=7000" in kwargs["options"]
    assert "idle_in_transaction_session_timeout" in kwargs["options"]
    assert kwargs["application_name"] == "unbroken:worker"
    assert kwargs["autocommit"] is True


def test_pgbouncer_transaction_mode_disables_prepared_statements() -> None:
    kwargs = connection_kwargs(load_settings(pgbouncer="transaction"), role="w")
    assert kwargs["prepare_threshold"] is None
    assert not load_settings(pgbouncer="transaction").uses_listen()


def test_chunk_sessions_idle_in_a_transaction_end_with_the_lease() -> None:
    settings = load_settings(lease_seconds=5, idle_in_transaction_timeout=60)
    chunks = connection_kwargs(settings, role="chunks")["options"]
    worker = connection_kwargs(settings, role="worker")["options"]
    assert "idle_in_transaction_session_timeout=5000" in chunks
    assert "idle_in_transaction_session_timeout=60000" in worker
    assert "synchronous_commit=on" in worker
    assert "synchronous_commit" not in chunks  # the user's data keeps the server's setting


def test_direct_connections_carry_the_settings_in_the_startup_packet_only() -> None:
    settings = load_settings(statement_timeout=7)
    assert "statement_timeout=7000" in connection_kwargs(settings, role="worker")["options"]
    assert session_statement(settings, role="worker") is None
    assert transaction_statement(settings, role="worker") is None


def test_behind_pgbouncer_no_options_and_one_statement_instead() -> None:
    session = load_settings(pgbouncer="session", statement_timeout=7)
    transaction = load_settings(pgbouncer="transaction", statement_timeout=7)
    for settings in (session, transaction):
        assert "options" not in connection_kwargs(settings, role="worker")  # PgBouncer refuses it
    on_connect = session_statement(session, role="worker")
    per_transaction = transaction_statement(transaction, role="worker")
    assert on_connect == (
        b"SELECT pg_catalog.set_config('search_path', 'pg_catalog,unbroken,pg_temp', false),"
        b" pg_catalog.set_config('synchronous_commit', 'on', false),"
        b" pg_catalog.set_config('statement_timeout', '7000', false),"
        b" pg_catalog.set_config('idle_in_transaction_session_timeout', '60000', false)"
    )
    assert per_transaction == on_connect.replace(b"false", b"true")  # local: ends with it
    assert transaction_statement(session, role="worker") is None
    assert session_statement(transaction, role="worker") is None


def test_nothing_to_set_means_no_statement() -> None:
    settings = load_settings(
        pgbouncer="session", statement_timeout=0, idle_in_transaction_timeout=0
    )
    assert session_statement(settings, role="chunks") is None
    assert session_statement(settings, role="worker") is not None  # synchronous_commit
