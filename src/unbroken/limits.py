"""Flow control: per-key concurrency and rate limits, declared in code, enforced at fetch.

    app.limit("customer", concurrency=3, rate=100, per=60)

    @app.task(limit_key=lambda customer_id, **_: f"customer:{customer_id}")
    def sync_customer(customer_id: int) -> None: ...

A job's limit key is `name:anything`; the part before the first ':' (the whole key when
there is none) names the `Limit` that governs it. Every key of a limit gets the limit to
itself: at most `concurrency` of its jobs run at once across all workers, and at most
`rate` of them are claimed in each window of `per` seconds (windows counted from the
epoch, so a 60 s window starts on the minute). Jobs over a limit stay available, in their
place; the fetch passes over them and takes the next jobs in priority order. Every worker
records its app's limits when it starts (migration 0010 says how the database keeps the
counts exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from unbroken.enqueue import name_problem
from unbroken.errors import ConfigError

MAX_LIMIT_KEY = 255  # characters, as jobs_limit_key_length allows
MAX_COUNT = 2**31 - 1
MAX_PERIOD = 366 * 86400.0


@dataclass(frozen=True)
class Limit:
    """One declared limit: None means that kind of limit does not apply."""

    name: str
    concurrency: int | None = None
    rate: int | None = None
    per: float | None = None

    def params(self) -> dict[str, object]:
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "period": self.per,
        }


def make_limit(name: object, concurrency: object, rate: object, per: object) -> Limit:
    """A checked `Limit`; ConfigError naming the problem otherwise."""
    problem = name_problem("limit name", name, 128)
    if problem is None and ":" in str(name):
        problem = f"limit name {name!r} must not hold ':' (keys are 'name:anything')"
    if problem is None:
        problem = _count_problem("concurrency", concurrency) or _count_problem("rate", rate)
    if problem is None and concurrency is None and rate is None:
        problem = f"limit {name!r} needs concurrency=, rate= (with per=) or both"
    if problem is None and (rate is None) != (per is None):
        problem = f"limit {name!r}: rate= and per= (seconds) go together"
    if problem is None and per is not None and not _seconds(per):
        problem = f"limit {name!r}: per= must be seconds, more than 0, at most a year: {per!r}"
    if problem is not None:
        raise ConfigError(problem)
    return Limit(
        str(name),
        concurrency if isinstance(concurrency, int) else None,
        rate if isinstance(rate, int) else None,
        float(per) if isinstance(per, int | float) else None,
    )


def _count_problem(what: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        return f"{what} must be a whole number from 1 to {MAX_COUNT}, got {value!r}"
    return None


def _seconds(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and 0 < value <= MAX_PERIOD
    )


def limit_name(key: str) -> str:
    """The name of the limit that governs `key`."""
    return key.split(":", 1)[0]


def key_problem(key: object, limits: dict[str, Limit]) -> str | None:
    """Why `key` cannot be a job's limit key in an app with these limits (None: it can)."""
    if not isinstance(key, str):
        return f"limit_key must be a string, got {type(key).__name__}"
    problem = name_problem("limit key", key, MAX_LIMIT_KEY)
    if problem is not None:
        return problem
    name = limit_name(key)
    if name not in limits:
        declared = ", ".join(sorted(limits)) or "none"
        return (
            f"limit key {key!r} names limit {name!r}, which this app does not declare "
            f"(app.limit({name!r}, ...); declared: {declared})"
        )
    return None


KeyFunction = Callable[..., str]
