"""CDC pipeline options are checked when the Pipeline is made, in one line each."""

from __future__ import annotations

from typing import Any

import pytest

from unbroken.cdc import Pipeline
from unbroken.errors import ConfigError


def make(**changes: Any) -> Pipeline:
    options: dict[str, Any] = {
        "name": "orders",
        "source_url": "postgresql:///src",
        "tables": ["orders"],
    }
    return Pipeline(**{**options, **changes})


def test_names_default_from_the_pipeline_and_tables_are_qualified() -> None:
    p = make(tables=["orders", "sales.lines"])
    assert (p.slot_name, p.publication_name) == ("unbroken_orders", "unbroken_orders")
    assert p.qualified_tables == ("public.orders", "sales.lines")
    assert make(slot="mine").slot_name == "mine"


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"name": "Orders-1"}, "CDC pipeline name 'Orders-1'"),
        ({"tables": []}, "tables= names no table"),
        ({"on_gap": "ignore"}, "on_gap='ignore', not 'resnapshot' or 'fail'"),
        ({"snapshot_chunk": 0}, "snapshot_chunk must be >= 1, got 0"),
    ],
)
def test_bad_options_are_one_line_errors(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(**changes)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
