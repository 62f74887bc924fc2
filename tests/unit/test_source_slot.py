"""Which URL `unbroken pipelines drop-slot` connects with when given none."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from unbroken.db.conninfo import redact
from unbroken.ops.source_slot import without_mask


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@db.example:5433/shop?sslmode=require",
        "host=db.example port=5433 dbname=shop user=app password=s3cret sslmode=require",
    ],
)
def test_the_stored_url_is_used_without_its_masked_password(url: str) -> None:
    stored = redact(url)  # how run_pipeline stores the source URL
    assert "***" in stored
    params = conninfo_to_dict(without_mask(stored))
    assert "password" not in params  # libpq then looks in PGPASSWORD and ~/.pgpass
    assert params == {
        "host": "db.example", "port": "5433", "dbname": "shop", "user": "app",
        "sslmode": "require",
    }  # fmt: skip


def test_a_url_without_a_password_is_kept() -> None:
    url = "postgresql://app@db.example/shop"
    assert conninfo_to_dict(without_mask(url)) == conninfo_to_dict(url)
