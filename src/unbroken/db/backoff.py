"""Exponential backoff with jitter, and an optional give-up deadline.

One small class used everywhere we wait before trying again (start-up, units of work,
batch writes, job retries), so every retry in unbroken spreads out the same way instead
of hammering a database that is already in trouble.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackoffPolicy:
    """delay(n) = min(cap, base * multiplier**(n-1)), then jittered by +/- jitter/2."""

    base: float = 0.1
    cap: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is random: 0 = none, 1 = "full jitter"

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0:
            raise ValueError("backoff base and cap must be > 0")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        exponent = max(0, attempt - 1)
        # Bound the exponent so huge attempt numbers cannot overflow a float.
        raw = self.base * self.multiplier ** min(exponent, 64)
        nominal = min(self.cap, raw)
        spread = nominal * self.jitter
        return nominal - spread / 2 + spread * rand()


@dataclass
class Backoff:
    """Counts tries of one operation and says how long to wait, or that it is time to stop."""

    policy: BackoffPolicy
    max_tries: int | None = None
    give_up_after: float | None = None  # seconds from the first try
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random
    tries: int = 0
    _started: float = field(default=0.0, repr=False)

    def failed(self) -> float | None:
        """Record a failed try; return the delay before the next one, or None to give up."""
        now = self.clock()
        if self.tries == 0:
            self._started = now
        self.tries += 1
        if self.max_tries is not None and self.tries >= self.max_tries:
            return None
        delay = self.policy.delay(self.tries, self.rand)
        if self.give_up_after is not None:
            remaining = self._started + self.give_up_after - now
            if remaining <= 0:
                return None
            delay = min(delay, remaining)
        return delay

    def reset(self) -> None:
        """The operation succeeded: the next failure starts from the first delay again."""
        self.tries = 0

    def elapsed(self) -> float:
        return self.clock() - self._started if self.tries else 0.0
