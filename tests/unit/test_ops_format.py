"""How operator values are shown (unbroken.ops.format): one set of rules for the CLI and the
dashboard, which differ only in the mark for a missing value and the space before a unit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from unbroken.enqueue import MAX_PAYLOAD_DEPTH
from unbroken.ops.format import (
    Undecodable,
    clip,
    format_age,
    format_bytes,
    format_duration,
    format_pct,
    jsonable,
    lenient_loads,
    shown_json,
    to_json,
)
from unbroken.states import JobState


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (45.9, "45s"), (192, "3m12s"), (7500, "2h05m"), (273600, "3d04h"), (-5, "0s")],
)
def test_ages(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown


def test_a_missing_value_is_marked_as_each_view_asks() -> None:
    assert format_age(None) == format_duration(None) == format_pct(None) == "-"
    assert format_age(float("nan"), missing="–") == "–"
    assert format_duration(None, missing="–") == format_pct(None, missing="–") == "–"


def test_durations_in_milliseconds_below_a_second() -> None:
    assert format_duration(0.0123) == "12ms"
    assert format_duration(1.256) == "1.26s"
    assert format_duration(0.0123, unit_sep=" ") == "12 ms"
    assert format_duration(1.256, unit_sep=" ") == "1.26 s"
    assert format_pct(0.125) == "12.5%"


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (2000 * 1024**4, "2000.0 TiB"),
    ],
)
def test_sizes_in_binary_units(count: int | None, shown: str) -> None:
    assert format_bytes(count) == shown


def test_clip_ends_with_an_ellipsis_only_when_cut() -> None:
    assert clip("short", 5) == "short"
    assert clip("longer text", 6) == "longe…"
    assert len(clip("x" * 500, 80)) == 80


def test_json_for_people_keeps_text_as_written() -> None:
    value = {"user": "zoë", "ids": [1, 2]}
    assert shown_json(value) == '{"user": "zoë", "ids": [1, 2]}'
    assert shown_json(value, compact=True) == '{"user":"zoë","ids":[1,2]}'
    assert shown_json(value, indent=1).startswith('{\n "user"')
    assert shown_json(datetime(2025, 1, 2, tzinfo=UTC)) == '"2025-01-02 00:00:00+00:00"'


def test_an_undecodable_value_is_shown_as_its_own_text() -> None:
    deep = "[" * (MAX_PAYLOAD_DEPTH + 1) + "]" * (MAX_PAYLOAD_DEPTH + 1)
    loaded = lenient_loads(deep.encode())
    assert isinstance(loaded, Undecodable)
    assert loaded.reason == "nested too deeply to show"
    assert len(loaded) < len("<undecodable: nested too deeply to show> ") + Undecodable.SHOWN + 2
    assert shown_json(loaded) == str(loaded)  # not quoted as a JSON string
    broken = lenient_loads("{nope")
    assert isinstance(broken, Undecodable)
    assert broken.reason.startswith("not JSON")
    assert lenient_loads(b'{"a": [1]}') == {"a": [1]}


@dataclass(frozen=True)
class Row:
    state: JobState
    at: datetime
    rate: float


def test_json_for_scripts_reads_rows_states_and_times() -> None:
    row = Row(JobState.DEAD, datetime(2025, 1, 2, tzinfo=UTC), float("inf"))
    assert jsonable({JobState.RUNNING: [row]}) == {
        "running": [{"state": "dead", "at": "2025-01-02T00:00:00+00:00", "rate": None}]
    }
    assert json.loads(to_json(row)) == {
        "state": "dead",
        "at": "2025-01-02T00:00:00+00:00",
        "rate": None,
    }
