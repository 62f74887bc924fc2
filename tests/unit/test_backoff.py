from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbroken.db.backoff import Backoff, BackoffPolicy


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    rand=st.floats(min_value=0, max_value=1),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_delay_stays_within_jittered_cap(attempt: int, rand: float, jitter: float) -> None:
    policy = BackoffPolicy(base=0.5, cap=30, multiplier=2, jitter=jitter)
    delay = policy.delay(attempt, lambda: rand)
    nominal = min(30, 0.5 * 2 ** (attempt - 1)) if attempt < 64 else 30
    assert nominal * (1 - jitter / 2) - 1e-9 <= delay <= nominal * (1 + jitter / 2) + 1e-9


def test_delays_grow_then_cap() -> None:
    policy = BackoffPolicy(base=1, cap=8, multiplier=2, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_jitter_spreads_retries() -> None:
    policy = BackoffPolicy(base=1, cap=100, jitter=0.5)
    assert len({round(policy.delay(5), 6) for _ in range(50)}) > 10


def test_max_tries_gives_up() -> None:
    backoff = Backoff(BackoffPolicy(jitter=0), max_tries=3)
    assert backoff.failed() is not None
    assert backoff.failed() is not None
    assert backoff.failed() is None


def test_give_up_deadline_uses_injected_clock() -> None:
    now = [100.0]
    backoff = Backoff(
        BackoffPolicy(base=1, cap=10, jitter=0), give_up_after=5, clock=lambda: now[0]
    )
    assert backoff.failed() == 1
    now[0] += 4.5
    assert backoff.failed() == pytest.approx(0.5)  # never sleeps past the deadline
    now[0] += 1
    assert backoff.failed() is None


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"cap": -1}, {"multiplier": 0.5}, {"jitter": 2}])
def test_bad_policy_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        BackoffPolicy(**kwargs)
