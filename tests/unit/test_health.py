"""The health score: each check's thresholds, the score, and the probe forms (no database)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from unbroken.db.stats import PoolStats
from unbroken.ops.health import HealthReport, Reason, Thresholds, evaluate
from unbroken.ops.rows import HealthInputs

CALM = HealthInputs(
    oldest_wait_s=2.0,
    available=3,
    succeeded=500,
    failed=5,
    expired_leases=0,
    long_running=0,
    dead_recent=0,
    workers=2,
    silent_workers=0,
)


def pool(waiting: int = 0, max_size: int = 4, in_use: int = 1) -> PoolStats:
    return PoolStats(
        role="worker",
        size=max_size,
        idle=max_size - in_use,
        in_use=in_use,
        waiting=waiting,
        max_size=max_size,
        requests=10,
        wait_ms=0,
        errors=0,
        connections_lost=0,
        reconnects=0,
        dirty_returns=0,
    )


def level(report: HealthReport, check: str) -> str:
    return next(r.level for r in report.reasons if r.check == check)


def message(report: HealthReport, check: str) -> str:
    return next(r.message for r in report.reasons if r.check == check)


def test_a_calm_system_scores_100_and_is_ready() -> None:
    report = evaluate(CALM, [pool()], schema_version=1, latest_version=1)
    assert (report.score, report.status, report.ready, report.live) == (100, "healthy", True, True)
    assert report.problems() == []
    # Every check reports, so an operator sees what was looked at, not only what failed.
    checks = {r.check for r in report.reasons}
    assert {"schema", "oldest_wait", "failure_rate", "stuck", "dead_letters", "workers"} <= checks
    assert "pool_waiters:worker" in checks


@pytest.mark.parametrize(
    ("wait", "expected"), [(299.0, "ok"), (300.0, "warn"), (1799.0, "warn"), (1800.0, "critical")]
)
def test_oldest_wait_thresholds(wait: float, expected: str) -> None:
    assert level(evaluate(replace(CALM, oldest_wait_s=wait)), "oldest_wait") == expected


def test_failure_rate_needs_enough_attempts_to_alarm() -> None:
    few = replace(CALM, succeeded=1, failed=9)  # 90 % of 10 attempts: a hint, not an alarm
    assert level(evaluate(few), "failure_rate") == "warn"
    many_warn = replace(CALM, succeeded=80, failed=20)
    assert level(evaluate(many_warn), "failure_rate") == "warn"
    many_bad = replace(CALM, succeeded=40, failed=60)
    report = evaluate(many_bad)
    assert level(report, "failure_rate") == "critical"
    assert report.status == "unhealthy"
    assert report.ready  # failing jobs are no reason to take this process out of rotation
    assert report.readiness_problems() == []
    assert "60% of 100 attempts" in message(report, "failure_rate")


def test_stuck_jobs_warn_and_many_expired_leases_are_critical() -> None:
    assert level(evaluate(replace(CALM, long_running=1)), "stuck") == "warn"
    assert level(evaluate(replace(CALM, expired_leases=1)), "stuck") == "warn"
    report = evaluate(replace(CALM, expired_leases=12, long_running=3))
    assert level(report, "stuck") == "critical"
    assert "12 running job(s) whose lease expired" in message(report, "stuck")
    assert "3 job(s) running longer than" in message(report, "stuck")


def test_dead_letter_growth() -> None:
    assert level(evaluate(replace(CALM, dead_recent=4)), "dead_letters") == "ok"
    assert level(evaluate(replace(CALM, dead_recent=5)), "dead_letters") == "warn"
    assert level(evaluate(replace(CALM, dead_recent=50)), "dead_letters") == "critical"


def test_pool_waiters() -> None:
    assert level(evaluate(CALM, [pool(waiting=1)]), "pool_waiters:worker") == "warn"
    swamped = evaluate(CALM, [pool(waiting=8, max_size=4)])
    assert level(swamped, "pool_waiters:worker") == "critical"
    assert not swamped.ready  # a swamped pool cannot serve
    assert evaluate(CALM, [pool(waiting=1)]).ready


def test_silent_workers() -> None:
    assert level(evaluate(replace(CALM, silent_workers=1)), "workers") == "warn"
    assert level(evaluate(replace(CALM, silent_workers=2)), "workers") == "critical"
    # No worker at all is fine for an idle system, not while jobs wait.
    assert level(evaluate(replace(CALM, workers=0, available=0)), "workers") == "ok"
    assert level(evaluate(replace(CALM, workers=0, available=3)), "workers") == "warn"


def test_a_missing_or_old_schema_is_critical() -> None:
    missing = evaluate(CALM, schema_version=None, latest_version=2)
    assert level(missing, "schema") == "critical"
    assert not missing.ready
    old = evaluate(CALM, schema_version=1, latest_version=2)
    assert "run `unbroken db migrate`" in message(old, "schema")


def test_score_adds_penalties_and_never_goes_below_zero() -> None:
    two_warnings = evaluate(replace(CALM, oldest_wait_s=400.0, dead_recent=6))
    assert (two_warnings.score, two_warnings.status) == (70, "degraded")
    assert two_warnings.ready  # degraded still serves
    everything = evaluate(HealthInputs(3600.0, 10, 10, 90, 20, 5, 100, 2, 2), [pool(waiting=9)])
    assert everything.score == 0
    assert everything.status == "unhealthy"


def test_thresholds_are_configurable() -> None:
    strict = Thresholds(oldest_wait_warn_s=1.0, oldest_wait_critical_s=2.0)
    assert level(evaluate(CALM, thresholds=strict), "oldest_wait") == "critical"


def test_not_live_is_not_ready_and_serialises() -> None:
    report = HealthReport(0, "unhealthy", [Reason("database", "critical", "down")], live=False)
    assert not report.ready
    data = report.as_dict()
    assert data["live"] is False
    assert data["ready"] is False
    assert data["reasons"] == [
        {"check": "database", "level": "critical", "message": "down", "value": None}
    ]
