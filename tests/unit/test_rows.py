"""runtime/rows.py: the row factory checks the statement's column names once, then builds
each typed, immutable row by position (the statements themselves run in every integration test)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from unbroken.runtime.rows import (
    CLAIM_COLUMNS,
    CLAIMED_JOB,
    FINISHED_JOB,
    RESCUED_JOB,
    ClaimedJob,
    FinishedJob,
)
from unbroken.states import JobState


def cursor(*names: str) -> Any:
    return SimpleNamespace(description=[SimpleNamespace(name=n) for n in names])


def test_a_claimed_job_is_built_from_the_row_by_position() -> None:
    at = datetime(2025, 6, 1, tzinfo=UTC)
    values = (
        7,
        "mail",
        "app.send",
        '{"args": [1]}',
        2,
        5,
        0,
        None,
        None,
        None,
        1,
        at,
        None,
        None,
        "claim",
    )
    job = CLAIMED_JOB(cursor(*CLAIM_COLUMNS))(values)
    assert job == ClaimedJob(
        7,
        "mail",
        "app.send",
        '{"args": [1]}',
        2,
        5,
        0,
        None,
        None,
        None,
        1,
        at,
        None,
        None,
        "claim",
    )
    assert (job.id, job.attempt, job.claim, job.run_at) == (7, 2, "claim", at)
    with pytest.raises(AttributeError):
        job.attempt = 3  # type: ignore[misc]


def test_states_come_back_as_job_states() -> None:
    finished = FINISHED_JOB(cursor("id", "state", "case", "n"))((7, "dead", None, 3))
    assert finished == FinishedJob(7, JobState.DEAD, 3)
    assert finished.state is JobState.DEAD
    rescued = RESCUED_JOB(
        cursor("id", "state", "worker_id", "task", "queue", "attempt", "max_attempts", "case")
    )((7, "retryable", "w1", "app.send", "mail", 1, 3, None))
    assert rescued.state is JobState.RETRYABLE


@pytest.mark.parametrize(
    "names",
    [
        CLAIM_COLUMNS[:-1],  # one column fewer
        (*CLAIM_COLUMNS, "extra"),  # one more
        ("id", "task", "queue", *CLAIM_COLUMNS[3:]),  # two swapped
    ],
)
def test_columns_that_moved_fail_the_statement_at_once(names: tuple[str, ...]) -> None:
    with pytest.raises(psycopg.ProgrammingError, match="returned the columns"):
        CLAIMED_JOB(cursor(*names))
