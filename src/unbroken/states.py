"""The job states and attempt outcomes, named once.

`JobState` mirrors the database's `unbroken.job_state` enum and the state names the
`jobs` table's CHECK constraints use (tests/unit/test_states.py and
tests/integration/test_states_schema.py keep them equal). docs/state_machine.md draws
the transitions. Both enums are `StrEnum`s: a member is its string, so it compares
equal to the text a row holds and goes into SQL parameters, JSON and logs unchanged.

`OutcomeKind` says what one attempt came to (an `Outcome`'s `kind`, the `outcome` field
of the `job.finished` event, the `reason` of a log line); `OUTCOME_STATE` gives the state
each kind writes, except `failed` and `timeout`, which write `retryable` while attempts
remain and `dead` after the last (`state_after`).
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"  # a workflow's step: waits for its upstream jobs (unbroken.workflow)
    SCHEDULED = "scheduled"  # waits for run_at (enqueued for later, or snoozed)
    AVAILABLE = "available"  # may be fetched now
    RUNNING = "running"  # held by a worker under a lease
    RETRYABLE = "retryable"  # failed, waits for its backoff (run_at)
    SUCCEEDED = "succeeded"  # final
    DEAD = "dead"  # final: attempts exhausted, permanent error or undecodable (dead letter)
    CANCELLED = "cancelled"  # final


# Not yet due: the scheduler promotes them to available when run_at comes.
DUE_LATER = frozenset({JobState.SCHEDULED, JobState.RETRYABLE})
# Waiting to run.
WAITING = frozenset({JobState.PENDING, JobState.SCHEDULED, JobState.AVAILABLE, JobState.RETRYABLE})
# Not finished.
LIVE = WAITING | {JobState.RUNNING}
# A unique key is held by a job in one of these (jobs_unique_key_idx): every live state but
# pending, since a workflow's steps have no unique key.
ACTIVE = LIVE - {JobState.PENDING}
# Final: finished_at is set exactly in these (the jobs_finished_iff_final constraint).
FINAL = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"  # the task returned
    FAILED = "failed"  # it raised: retried after its backoff, dead after the last attempt
    TIMEOUT = "timeout"  # it ran past its timeout: like failed
    DEAD = "dead"  # it raised a permanent error: dead at once
    CANCELLED = "cancelled"  # it stopped at a cancel request (JobCancelled)
    SNOOZED = "snoozed"  # it raised Snooze: runs again later, the attempt given back
    HANDBACK = "handback"  # shutdown grace ran out: available again, the attempt given back
    UNKNOWN_TASK = "unknown_task"  # no such task in this app: offered again later, unspent
    UNDECODABLE = "undecodable"  # its args cannot be decoded: dead at fetch, never run


# The state each kind writes; failed and timeout depend on the attempts left (state_after).
OUTCOME_STATE: dict[OutcomeKind, JobState] = {
    OutcomeKind.SUCCEEDED: JobState.SUCCEEDED,
    OutcomeKind.DEAD: JobState.DEAD,
    OutcomeKind.CANCELLED: JobState.CANCELLED,
    OutcomeKind.SNOOZED: JobState.SCHEDULED,
    OutcomeKind.HANDBACK: JobState.AVAILABLE,
    OutcomeKind.UNKNOWN_TASK: JobState.SCHEDULED,
    OutcomeKind.UNDECODABLE: JobState.DEAD,
}
RETRIED = frozenset({OutcomeKind.FAILED, OutcomeKind.TIMEOUT})
# Counted as a failed attempt by metrics and error reporting (Sentry): an unknown task too,
# since it no longer goes dead and nothing else would show a worker missing a task.
FAILED_OUTCOMES = frozenset(
    {OutcomeKind.FAILED, OutcomeKind.DEAD, OutcomeKind.TIMEOUT, OutcomeKind.UNKNOWN_TASK}
)


def state_after(kind: OutcomeKind, attempt: int, max_attempts: int) -> JobState:
    """The state an attempt's outcome writes."""
    if kind in RETRIED:
        return JobState.DEAD if attempt >= max_attempts else JobState.RETRYABLE
    return OUTCOME_STATE[kind]
