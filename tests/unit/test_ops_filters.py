"""What an operator narrows jobs by (unbroken.ops.filters), without a database."""

from __future__ import annotations

import pytest

from unbroken.errors import ConfigError
from unbroken.ops.filters import JobFilter, parse_duration
from unbroken.ops.store import CANCELLABLE_STATES, RETRYABLE_STATES
from unbroken.states import FINAL, LIVE, JobState


def test_states_are_job_states_in_the_order_given() -> None:
    flt = JobFilter.build(state=" cancelled, dead ")
    assert flt.states == (JobState.CANCELLED, JobState.DEAD)
    assert all(type(s) is JobState for s in flt.states)
    assert JobFilter(states=("dead",)) == JobFilter(states=(JobState.DEAD,))
    # An array literal of unknown type, so the planner sees the states (admin.sql job_filter).
    assert flt.params()["states"] == "{cancelled,dead}"
    assert JobFilter.build(state="").states is None


def test_an_unknown_state_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match="unknown job state 'zombie' \\(one of: pending, scheduled, "
    ):
        JobFilter.build(state="dead,zombie")


def test_actions_apply_to_the_states_their_guarded_writes_accept() -> None:
    assert set(CANCELLABLE_STATES) == LIVE
    assert set(RETRYABLE_STATES) == FINAL - {JobState.SUCCEEDED}
    everything = JobFilter.build(queue="etl")
    assert everything.restricted_to(CANCELLABLE_STATES).describe() == (
        "state=pending,scheduled,available,retryable,running queue=etl"
    )
    # None of the asked states is one the action applies to: it matches nothing.
    assert JobFilter.build(state="running").restricted_to(RETRYABLE_STATES).states == ()
    assert JobFilter.build(state="running").restricted_to(RETRYABLE_STATES).describe() == (
        "state=(none)"
    )


def test_args_match_by_containment_when_json_else_by_substring() -> None:
    assert JobFilter.build(args='{"user": 5}').params()["args_json"] == '{"user": 5}'
    assert JobFilter.build(args="[1, 2]").params()["args_text"] == "[1, 2]"
    assert JobFilter.build(args="  ").args is None


def test_describe_and_durations() -> None:
    flt = JobFilter.build(state="dead", task="t", older_than="1h30m", args="x")
    assert flt.older_than == 5400
    assert flt.describe() == "state=dead task=t older than 1h30m args~x"
    assert JobFilter().describe() == "all jobs"
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1w") == 604800
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("5 parsecs")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queue": "etl\x00"}, "queue holds a NUL character"),
        ({"task": "\udc80"}, "task holds a lone surrogate"),
        ({"args": "a\x00b"}, "args holds a NUL character"),
        ({"args": '{"k": "\\u0000"}'}, "args holds a NUL character"),
        ({"args": '{"k": "\\ud800"}'}, "args holds a lone surrogate"),
        ({"older_than": "9" * 30 + "d"}, "too long a duration: at most 10 years"),
    ],
)
def test_input_postgresql_cannot_take_is_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobFilter.build(**kwargs)


def test_json_escapes_postgresql_can_take_still_match() -> None:
    assert JobFilter.build(args='{"k": "\\u00e9"}').params()["args_json"] == '{"k": "\\u00e9"}'
    assert JobFilter.build(older_than="3650d").older_than == 3650 * 86400
