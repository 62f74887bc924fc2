"""states.py against migrations/schema.sql: every state the schema names is a JobState.

The CHECK constraints and the partial indexes of `unbroken.jobs` name states in their
text; a state added to the enum but not to the constraints (or the reverse), or a set in
states.py that no longer matches the predicate it mirrors, fails here.
tests/integration/test_states_schema.py checks the same against a migrated database.
"""

from __future__ import annotations

import re
from importlib.resources import files

import model
from unbroken.states import (
    ACTIVE,
    DUE_LATER,
    FINAL,
    LIVE,
    OUTCOME_STATE,
    RETRIED,
    WAITING,
    JobState,
    OutcomeKind,
    state_after,
)

SCHEMA = files("unbroken.migrations").joinpath("schema.sql").read_text()
QUOTED = re.compile(r"'([a-z_]+)'")


def enum_values(sql: str) -> list[str]:
    body = re.search(r"CREATE TYPE unbroken\.job_state AS ENUM \((.*?)\);", sql, re.S)
    assert body is not None, "schema.sql declares no unbroken.job_state enum"
    text = re.sub(r"--[^\n]*", "", body.group(1))
    return QUOTED.findall(text)


def state_sets(sql: str) -> dict[str, set[str]]:
    """{constraint or index name: the states its text names after `state`}."""
    found: dict[str, set[str]] = {}
    for name, text in re.findall(
        r"CONSTRAINT (\w+) CHECK \((.*?)\)(?:,\n|\n\)(?:;| WITH))", sql, re.S
    ) + re.findall(r"CREATE (?:UNIQUE )?INDEX (\w+) ON unbroken\.jobs [^;]*?WHERE ([^;]*);", sql):
        named: set[str] = set()
        for m in re.finditer(r"\bstate(?:::text)?\s*(?:=|<>|IN)\s*(\([^)]*\)|'[a-z_]+')", text):
            named.update(QUOTED.findall(m.group(1)))
        if named:
            found[name] = named
    return found


def test_the_enum_in_schema_sql_is_job_state_in_order() -> None:
    assert enum_values(SCHEMA) == [s.value for s in JobState]


def test_every_state_a_check_constraint_or_index_names_is_a_job_state() -> None:
    sets = state_sets(SCHEMA)
    # The ones this test must find, so a change in the schema's layout cannot empty it.
    assert {
        "jobs_finished_iff_final",
        "jobs_running_holds_lease",
        "jobs_running_was_attempted",
        "jobs_fetch_idx",
        "jobs_due_idx",
        "jobs_lease_idx",
        "jobs_unique_key_idx",
    } <= sets.keys()
    for name, states in sets.items():
        assert states <= set(JobState), f"{name} names states JobState lacks: {states}"


def test_the_sets_match_the_predicates_they_mirror() -> None:
    sets = state_sets(SCHEMA)
    assert sets["jobs_finished_iff_final"] == FINAL
    assert sets["jobs_due_idx"] == DUE_LATER
    assert sets["jobs_unique_key_idx"] == ACTIVE
    assert sets["jobs_fetch_idx"] == {JobState.AVAILABLE}
    assert sets["jobs_lease_idx"] == {JobState.RUNNING}
    assert WAITING | {JobState.RUNNING} | FINAL == set(JobState)
    assert not WAITING & FINAL
    assert ACTIVE | {JobState.PENDING} == LIVE  # a workflow's steps take no unique key
    assert sets["jobs_pending_waits_upstream"] == {JobState.PENDING}


def test_a_state_the_enum_lacks_is_caught() -> None:
    drifted = SCHEMA.replace("'succeeded', 'dead', 'cancelled'", "'succeeded', 'dead', 'gone'")
    assert "gone" in state_sets(drifted)["jobs_finished_iff_final"]
    added = SCHEMA.replace("'cancelled'   -- final", "'cancelled',  -- final\n    'paused'")
    assert enum_values(added)[-1] == "paused"


def test_the_model_uses_the_same_states() -> None:
    assert tuple(model.STATES) == tuple(JobState)
    assert model.FINAL == FINAL


def test_every_outcome_kind_writes_a_state() -> None:
    assert set(OUTCOME_STATE) | RETRIED == set(OutcomeKind)
    assert not set(OUTCOME_STATE) & RETRIED
    for kind in RETRIED:
        assert state_after(kind, 1, 3) is JobState.RETRYABLE
        assert state_after(kind, 3, 3) is JobState.DEAD
    assert state_after(OutcomeKind.HANDBACK, 3, 3) is JobState.AVAILABLE
    assert state_after(OutcomeKind.UNKNOWN_TASK, 1, 1) is JobState.SCHEDULED
