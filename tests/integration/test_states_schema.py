"""states.JobState against a migrated database: the enum's values and the CHECK constraints.

tests/unit/test_states.py reads schema.sql; this reads what the migrations actually made
(enum_range and pg_get_constraintdef), so a migration that adds or drops a state without
JobState following fails here.
"""

from __future__ import annotations

import re

import psycopg

from unbroken import App
from unbroken.states import FINAL, JobState


def test_job_state_is_the_database_enum(app: App, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT enum_range(NULL::unbroken.job_state)::text[]").fetchone()
        assert row is not None
        assert row[0] == [s.value for s in JobState]

        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'unbroken.jobs'::regclass AND contype = 'c'"
        ).fetchall()
    named = {
        name: set(re.findall(r"'([a-z_]+)'::unbroken\.job_state", text))
        for name, text in constraints
    }
    assert named["jobs_finished_iff_final"] == FINAL
    assert named["jobs_running_holds_lease"] == {JobState.RUNNING}
    for name, states in named.items():
        assert states <= set(JobState), f"{name} names states JobState lacks: {states}"
