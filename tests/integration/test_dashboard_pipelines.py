"""The dashboard's /pipelines pages (CDC pipelines as their workers last wrote them)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from markupsafe import escape
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from ops_seed import HOSTILE
from pipelines_seed import add_dead_letter, add_pipeline, add_schema_change
from unbroken import App
from unbroken.dashboard import create_app
from unbroken.settings import load_settings


@pytest.fixture
def client(app: App, database_url: str) -> Iterator[TestClient]:
    dashboard = create_app(load_settings(database_url=database_url), credentials=None)
    with TestClient(dashboard, base_url="http://localhost") as c:
        yield c


def test_the_list_shows_state_position_lag_and_retained_wal(
    client: TestClient, database_url: str
) -> None:
    empty = client.get("/pipelines")
    assert empty.status_code == 200
    assert "No pipelines yet" in empty.text
    assert 'href="/pipelines" class="active" aria-current="page"' in empty.text  # in the nav
    add_pipeline(database_url, "orders")
    add_pipeline(
        database_url, "users", state="failed", last_error=f"source went away {HOSTILE}",
        position=None, lag_bytes=None, lag_seconds=None, retained_wal_bytes=None,
    )  # fmt: skip
    add_dead_letter(database_url, "orders", "value too long")
    page = client.get("/pipelines")
    assert page.status_code == 200
    text = page.text
    for shown in (
        'href="/pipelines/orders"',
        '<span class="state p-streaming">streaming</span>',
        '<span class="state p-failed">failed</span>',
        "0/16B3748",
        "1.5 KiB",
        "3s",
        "5.0 MiB",
        "12,345",
        f"source went away {escape(HOSTILE)}",
    ):
        assert shown in text, shown
    assert HOSTILE not in text


def test_a_pipeline_page_lists_its_schema_changes_and_dead_letters(
    client: TestClient, database_url: str
) -> None:
    add_pipeline(database_url, "orders")
    add_dead_letter(database_url, "orders", f"null value in column total {HOSTILE}")
    add_schema_change(database_url, "orders", {"columns": ["id"]}, {"columns": ["id", "note"]})
    page = client.get("/pipelines/orders")
    assert page.status_code == 200
    for shown in (
        "postgresql://app@source.example:5432/shop",
        "unbroken_orders / unbroken_orders",
        "public.orders",
        "Schema changes",
        str(escape('{"columns": ["id", "note"]}')),
        "Dead letters",
        f"null value in column total {escape(HOSTILE)}",
    ):
        assert shown in page.text, shown
    assert HOSTILE not in page.text
    missing = client.get("/pipelines/nope")
    assert missing.status_code == 404
    assert "no pipeline &#39;nope&#39;" in missing.text


def test_metrics_show_each_pipeline_s_lag_retained_wal_and_dead_letters(
    client: TestClient, database_url: str
) -> None:
    add_pipeline(database_url, "orders")
    add_pipeline(
        database_url, "users", state="waiting",
        position=None, lag_bytes=None, lag_seconds=None, retained_wal_bytes=None,
    )  # fmt: skip
    add_dead_letter(database_url, "orders", "value too long")
    metrics = client.get("/metrics").text
    for line in (
        'unbroken_cdc_lag_bytes{pipeline="orders"} 1536.0',
        'unbroken_cdc_lag_seconds{pipeline="orders"} 3.0',
        'unbroken_cdc_retained_wal_bytes{pipeline="orders"} 5.24288e+06',
        'unbroken_cdc_dead_letters{pipeline="orders"} 1.0',
        'unbroken_cdc_dead_letters{pipeline="users"} 0.0',
    ):
        assert line in metrics, line
    # A figure a pipeline has not written yet is left out, not reported as 0.
    assert 'unbroken_cdc_retained_wal_bytes{pipeline="users"}' not in metrics
