"""Health: one score from 0 to 100 with the reasons behind it, and probe forms.

The checks read what operators otherwise dig out of logs by hand:

| check        | warn when                                 | critical when                      |
|--------------|-------------------------------------------|------------------------------------|
| oldest_wait  | a job waited > 5 min (unpaused queues)    | > 30 min                           |
| failure_rate | > 10 % of attempts failed in the window   | > 50 % (with >= 20 attempts)       |
| stuck        | a lease expired > 60 s ago, or a job ran  | >= 10 expired leases               |
|              | longer than 1 h                           |                                    |
| dead_letters | >= 5 jobs went dead in the window         | >= 50                              |
| pool_waiters | a caller waits for a pooled connection    | waiters >= twice the pool's size   |
| workers      | a worker is silent, or none while jobs    | every registered worker is silent  |
|              | wait                                      |                                    |
| schema       |                                           | missing or behind the code         |

Each warning costs 15 points and each critical finding 40. `status` is "unhealthy" on any
critical finding, "degraded" on any warning, else "healthy". Probes:

- live: the process can do its work at all. Over HTTP that is "the dashboard answers"
  (a database outage must not get every pod restarted: a restart does not fix the
  database); from the CLI, which has nothing else to prove, it is "the database answers".
- ready: this process can serve: its database answers, the schema is at the version the
  code expects, and its pools are not swamped (the `database`, `schema` and
  `pool_waiters` checks). What the jobs do (failure rate, dead letters, waiting, stuck
  jobs, silent workers) lowers the score and can make the status unhealthy, never
  readiness: taking a process out of rotation does not make a job fail less.

`evaluate` is pure (inputs in, report out), so the thresholds are unit-tested without a
database; `check` reads the inputs through the operator store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import psycopg

from unbroken.db.conninfo import redact
from unbroken.db.stats import PoolStats
from unbroken.errors import StatementDeadline
from unbroken.migrations import available
from unbroken.ops.format import format_age
from unbroken.ops.rows import HealthInputs
from unbroken.ops.store import OperatorStore

Level = Literal["ok", "warn", "critical"]
Status = Literal["healthy", "degraded", "unhealthy"]
PENALTY: dict[Level, int] = {"ok": 0, "warn": 15, "critical": 40}
# The checks a critical finding of which makes a process not ready (`pool_waiters:<role>`).
READINESS_CHECKS = frozenset({"database", "schema", "pool_waiters"})


@dataclass(frozen=True)
class Thresholds:
    """Where each check turns to warn or critical; defaults suit most deployments."""

    window_s: float = 900.0  # failure rate and dead-letter growth look back this far
    oldest_wait_warn_s: float = 300.0
    oldest_wait_critical_s: float = 1800.0
    failure_rate_warn: float = 0.10
    failure_rate_critical: float = 0.50
    failure_min_attempts: int = 20  # below this many attempts a rate says nothing
    lease_grace_s: float = 60.0  # the rescuer's normal delay, not yet a problem
    expired_leases_critical: int = 10
    long_running_s: float = 3600.0
    dead_warn: int = 5
    dead_critical: int = 50
    silent_after_s: float = 60.0  # a worker beats every few seconds


@dataclass(frozen=True)
class Reason:
    check: str
    level: Level
    message: str
    value: float | None = None


@dataclass(frozen=True)
class HealthReport:
    score: int
    status: Status
    reasons: list[Reason] = field(default_factory=list)
    live: bool = True

    @property
    def ready(self) -> bool:
        """This process can serve: live, and no critical finding of READINESS_CHECKS."""
        return self.live and not self.readiness_problems()

    def problems(self) -> list[Reason]:
        return [r for r in self.reasons if r.level != "ok"]

    def readiness_problems(self) -> list[Reason]:
        """The critical findings that make this process not ready."""
        return [
            r
            for r in self.reasons
            if r.level == "critical" and r.check.partition(":")[0] in READINESS_CHECKS
        ]

    def as_dict(self) -> dict[str, object]:
        return {
            "score": self.score,
            "status": self.status,
            "live": self.live,
            "ready": self.ready,
            "reasons": [
                {"check": r.check, "level": r.level, "message": r.message, "value": r.value}
                for r in self.reasons
            ],
        }


def _level(value: float, warn: float, critical: float) -> Level:
    if value >= critical:
        return "critical"
    if value >= warn:
        return "warn"
    return "ok"


def evaluate(
    inputs: HealthInputs,
    pools: Sequence[PoolStats] = (),
    thresholds: Thresholds | None = None,
    *,
    schema_version: int | None = None,
    latest_version: int | None = None,
) -> HealthReport:
    """The score and its reasons from what the database and the pools report."""
    t = thresholds or Thresholds()
    window = format_age(t.window_s)
    reasons: list[Reason] = []

    if latest_version is not None:
        if schema_version is None:
            reasons.append(
                Reason("schema", "critical", "schema missing: run `unbroken db migrate`")
            )
        elif schema_version < latest_version:
            reasons.append(
                Reason(
                    "schema",
                    "critical",
                    f"schema at version {schema_version}, code expects {latest_version}: "
                    "run `unbroken db migrate`",
                    schema_version,
                )
            )
        else:
            reasons.append(Reason("schema", "ok", f"schema at version {schema_version}"))

    wait = inputs.oldest_wait_s or 0.0
    level = _level(wait, t.oldest_wait_warn_s, t.oldest_wait_critical_s)
    message = (
        f"oldest waiting job has waited {format_age(wait)} ({inputs.available} waiting)"
        if inputs.available
        else "no job is waiting"
    )
    reasons.append(Reason("oldest_wait", level, message, wait))

    attempts = inputs.succeeded + inputs.failed
    rate = inputs.failed / attempts if attempts else 0.0
    level = "ok"
    if attempts >= t.failure_min_attempts:
        level = _level(rate, t.failure_rate_warn, t.failure_rate_critical)
    elif inputs.failed and rate >= t.failure_rate_critical:
        level = "warn"  # few attempts, most failing: worth a look, not an alarm
    reasons.append(
        Reason(
            "failure_rate",
            level,
            f"{rate:.0%} of {attempts} attempts failed in the last {window}",
            rate,
        )
    )

    stuck_level: Level = "ok"
    parts = []
    if inputs.expired_leases:
        stuck_level = "critical" if inputs.expired_leases >= t.expired_leases_critical else "warn"
        parts.append(
            f"{inputs.expired_leases} running job(s) whose lease expired over "
            f"{format_age(t.lease_grace_s)} ago (is a rescuer running?)"
        )
    if inputs.long_running:
        stuck_level = "warn" if stuck_level == "ok" else stuck_level
        parts.append(
            f"{inputs.long_running} job(s) running longer than {format_age(t.long_running_s)}"
        )
    reasons.append(
        Reason(
            "stuck",
            stuck_level,
            "; ".join(parts) or "no stuck job",
            float(inputs.expired_leases + inputs.long_running),
        )
    )

    level = _level(inputs.dead_recent, t.dead_warn, t.dead_critical)
    reasons.append(
        Reason(
            "dead_letters",
            level,
            f"{inputs.dead_recent} job(s) went dead in the last {window}",
            float(inputs.dead_recent),
        )
    )

    for pool in pools:
        level = "ok"
        if pool.waiting:
            level = "critical" if pool.waiting >= 2 * max(pool.max_size, 1) else "warn"
        reasons.append(
            Reason(
                f"pool_waiters:{pool.role}",
                level,
                f"pool {pool.role!r}: {pool.in_use}/{pool.max_size} in use, {pool.waiting} waiting",
                float(pool.waiting),
            )
        )

    level = "ok"
    if inputs.workers == 0:
        message = "no worker registered"
        if inputs.available:
            level = "warn"
            message += f" while {inputs.available} job(s) wait"
    elif inputs.silent_workers >= inputs.workers:
        level = "critical"
        message = f"all {inputs.workers} worker(s) silent for over {format_age(t.silent_after_s)}"
    elif inputs.silent_workers:
        level = "warn"
        message = (
            f"{inputs.silent_workers} of {inputs.workers} worker(s) silent for over "
            f"{format_age(t.silent_after_s)}"
        )
    else:
        message = f"{inputs.workers} worker(s) beating"
    reasons.append(Reason("workers", level, message, float(inputs.silent_workers)))

    score = max(0, 100 - sum(PENALTY[r.level] for r in reasons))
    levels = {r.level for r in reasons}
    status: Status = (
        "unhealthy" if "critical" in levels else "degraded" if "warn" in levels else "healthy"
    )
    return HealthReport(score, status, reasons)


def check(
    store: OperatorStore,
    pools: Sequence[PoolStats] = (),
    thresholds: Thresholds | None = None,
) -> HealthReport:
    """Read the inputs (two short queries) and evaluate them; an unreachable DB is not live."""
    t = thresholds or Thresholds()
    try:
        version = store.schema_version()
        latest = available()[-1].version
        if version is None or version < latest:
            return evaluate(_EMPTY, pools, t, schema_version=version, latest_version=latest)
        inputs = store.health_inputs(
            window_s=t.window_s,
            lease_grace_s=t.lease_grace_s,
            long_running_s=t.long_running_s,
            silent_after_s=t.silent_after_s,
        )
    except (psycopg.Error, StatementDeadline) as exc:
        text = redact(str(exc)).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return HealthReport(
            0,
            "unhealthy",
            [Reason("database", "critical", f"database unreachable: {first}")],
            live=False,
        )
    return evaluate(inputs, pools, t, schema_version=version, latest_version=latest)


_EMPTY = HealthInputs(
    oldest_wait_s=None,
    available=0,
    succeeded=0,
    failed=0,
    expired_leases=0,
    long_running=0,
    dead_recent=0,
    workers=0,
    silent_workers=0,
)
