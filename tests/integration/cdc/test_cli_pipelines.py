"""`unbroken pipelines ls|show|drop-slot` as a user runs them, against pipelines' rows in the
unbroken database and a real replication slot on a logical-decoding source."""

from __future__ import annotations

import psycopg

from cdc_source import CdcSource
from cli_support import cli, cli_json
from pipelines_seed import add_dead_letter, add_pipeline, add_schema_change
from unbroken import App


def slots(source: CdcSource) -> list[str]:
    return [row[0] for row in source.execute("SELECT slot_name FROM pg_replication_slots")]


def state_of(url: str, name: str) -> tuple[str, str | None]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT state, last_error FROM unbroken.cdc_pipelines WHERE name = %s", [name]
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_ls_lists_state_position_lag_and_retained_wal(app: App, database_url: str) -> None:
    assert cli(database_url, "pipelines", "ls").stdout == "no pipelines yet\n"
    add_pipeline(database_url, "orders")
    add_pipeline(
        database_url, "users", state="failed", last_error="source went away\nsecond line",
        position=None, lag_bytes=None, lag_seconds=None, retained_wal_bytes=None, changes=0,
    )  # fmt: skip
    add_dead_letter(database_url, "orders", "value too long")
    listed = cli_json(database_url, "pipelines", "ls")["pipelines"]
    assert [(p["name"], p["state"], p["position"]) for p in listed] == [
        ("orders", "streaming", "0/16B3748"),
        ("users", "failed", None),
    ]
    assert listed[0]["lag_bytes"] == 1536
    assert listed[0]["lag_seconds"] == 3.0
    assert listed[0]["retained_wal_bytes"] == 5 * 1024 * 1024
    assert (listed[0]["changes"], listed[0]["dead_letters"]) == (12345, 1)
    result = cli(database_url, "pipelines", "ls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    orders = next(line for line in lines if line.startswith("orders"))
    assert orders.split()[:9] == [
        "orders", "streaming", "0/16B3748", "1.5", "KiB", "/", "3s", "5.0", "MiB",
    ]  # fmt: skip
    assert "12,345" in orders
    assert "users: source went away" in result.stdout  # a failed pipeline's error, one line
    assert "second line" not in result.stdout


def test_show_names_source_slot_dead_letters_and_schema_changes(
    app: App, database_url: str
) -> None:
    add_pipeline(database_url, "orders")
    add_dead_letter(database_url, "orders", "null value in column total")
    add_dead_letter(database_url, "orders", "value too long for type character varying(5)")
    add_schema_change(database_url, "orders", {"columns": ["id"]}, {"columns": ["id", "note"]})
    shown = cli_json(database_url, "pipelines", "show", "orders")
    assert (shown["dead_letters"], shown["schema_changes"]) == (2, 1)
    assert shown["slot_name"] == "unbroken_orders"
    assert shown["recent_schema_changes"][0]["after"] == {"columns": ["id", "note"]}
    assert [d["error"] for d in shown["recent_dead_letters"]] == [
        "value too long for type character varying(5)",
        "null value in column total",
    ]
    text = cli(database_url, "pipelines", "show", "orders").stdout
    for expected in (
        "postgresql://app@source.example:5432/shop",
        "unbroken_orders / unbroken_orders",
        "public.orders",
        "dead letters",
        "schema changes",
        "value too long",
        '{"columns":["id","note"]}',
    ):
        assert expected in text


def test_show_an_unknown_pipeline_is_one_line_naming_the_known(app: App, database_url: str) -> None:
    add_pipeline(database_url, "orders")
    result = cli(database_url, "pipelines", "show", "order")
    assert result.returncode == 2
    assert result.stderr == "error: no pipeline 'order' (known: orders)\n"


def test_drop_slot_asks_then_drops_and_stops_the_pipeline(
    app: App, database_url: str, cdc_source: CdcSource
) -> None:
    cdc_source.execute("SELECT pg_create_logical_replication_slot('unbroken_orders', 'pgoutput')")
    identifier = cdc_source.value("SELECT system_identifier::text FROM pg_control_system()")
    database = cdc_source.url.rsplit("/", 1)[1]
    add_pipeline(
        database_url, "orders", source=cdc_source.url, system_identifier=identifier,
        database=database,
    )  # fmt: skip
    refused = cli(database_url, "pipelines", "drop-slot", "orders")
    assert refused.returncode == 2
    assert "not confirmed: no terminal to ask on; pass --yes" in refused.stderr
    assert "unbroken_orders" in slots(cdc_source)
    assert state_of(database_url, "orders")[0] == "streaming"

    dropped = cli(database_url, "pipelines", "drop-slot", "orders", "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stdout == "slot unbroken_orders dropped; pipeline orders stopped\n"
    assert "unbroken_orders" not in slots(cdc_source)
    state, why = state_of(database_url, "orders")
    assert state == "stopped"
    assert why == "replication slot dropped by `unbroken pipelines drop-slot`"

    again = cli_json(database_url, "pipelines", "drop-slot", "orders", "--yes")
    assert again == {"pipeline": "orders", "slot": "unbroken_orders", "dropped": False,
                     "state": "stopped"}  # fmt: skip


def test_drop_slot_refuses_another_server_or_database(
    app: App, database_url: str, cdc_source: CdcSource
) -> None:
    cdc_source.execute("SELECT pg_create_logical_replication_slot('unbroken_orders', 'pgoutput')")
    add_pipeline(
        database_url, "orders", source=cdc_source.url, system_identifier="42", database=None
    )
    result = cli(database_url, "pipelines", "drop-slot", "orders", "--yes")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "is not the source of pipeline 'orders': its system identifier is" in result.stderr
    assert "the pipeline's 42" in result.stderr
    assert "unbroken_orders" in slots(cdc_source)
    assert state_of(database_url, "orders")[0] == "streaming"


def test_drop_slot_on_an_unreachable_source_is_one_line_without_password(
    app: App, database_url: str
) -> None:
    add_pipeline(database_url, "orders")
    result = cli(
        database_url, "pipelines", "drop-slot", "orders", "--yes",
        "--source", "postgresql://app:s3cret@127.0.0.1:1/shop",
    )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: pipeline 'orders': CDC source: ")
    assert "(host 127.0.0.1 port 1 database shop)" in result.stderr
    assert "s3cret" not in result.stderr
    assert state_of(database_url, "orders")[0] == "streaming"
