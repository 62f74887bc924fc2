"""How a pool reconnects while its server is away: steadily, one attempt at a time.

psycopg_pool retries every missing connection on its own schedule, 1, 2, 4 s apart, and
gives up after `reconnect_timeout`. Measured against that: a caller waiting on the pool got
its connection 0.7 to 2.8 s after the server accepted again (the next doubling), an outage
longer than the series (6 s here) failed callers that could have waited longer (nobody
reconnected until a new checkout), and a pool of 16 made 16 attempts at once on every round
(62 refused connects a second while its server restarted).

Each of our pools has one `ReconnectGate` instead, shared by all its missing connections.
While the server answers it lets every attempt through; once an attempt has failed, at most
one attempt is in flight, and the next comes after the shared backoff (RECONNECT_POLICY:
0.05 s doubling to 0.5 s, with jitter): a waiting caller gets its connection within about
half a second of the server accepting again, and a pool never makes more than about three
attempts a second however many connections it lost. The attempts never give up while the
pool is open, so an outage of any length ends the moment the server is back.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from psycopg_pool.base import AttemptWithBackoff

from unbroken.db.backoff import Backoff, BackoffPolicy

RECONNECT_POLICY = BackoffPolicy(base=0.05, cap=0.5, jitter=0.5)
# A connection waiting while another attempt is in flight looks again this soon: a refused
# connect takes a millisecond, a black-holed one up to connect_timeout.
IN_FLIGHT_RECHECK = 0.1


class ReconnectGate:
    """Admits a pool's connection attempts: all while the server answers, one at a time
    and spaced by the backoff once an attempt has failed.

    Thread-safe with no awaits inside, so the async pool's tasks and the sync pool's
    worker threads share the same code.
    """

    def __init__(
        self,
        policy: BackoffPolicy = RECONNECT_POLICY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = Backoff(policy, clock=clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._failing = False
        self._in_flight = 0
        self._next_at = 0.0

    def admit(self) -> float:
        """0.0: attempt now (then report `succeeded()`/`failed()`, and `release()`);
        otherwise the seconds to wait before asking again."""
        with self._lock:
            if self._failing:
                if self._in_flight:
                    return IN_FLIGHT_RECHECK
                wait = self._next_at - self._clock()
                if wait > 0:
                    return wait
            self._in_flight += 1
            return 0.0

    def succeeded(self) -> None:
        with self._lock:
            self._failing = False
            self._backoff.reset()

    def failed(self) -> None:
        with self._lock:
            self._failing = True
            self._next_at = self._clock() + (self._backoff.failed() or RECONNECT_POLICY.cap)

    def release(self) -> None:
        """The admitted attempt is over, whatever its outcome."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def until_next(self) -> float:
        """Seconds until the next attempt may start (0 when it may start now)."""
        with self._lock:
            return max(0.0, self._next_at - self._clock()) if self._failing else 0.0


class GatedAttempt(AttemptWithBackoff):
    """psycopg_pool's reconnect attempt, paced by the pool's gate instead of its own
    doubling, and never giving up (the pool's `reconnect_timeout` plays no part)."""

    def __init__(self, gate: ReconnectGate) -> None:
        super().__init__(timeout=math.inf)
        self._gate = gate

    def update_delay(self, now: float) -> None:
        self.delay = self._gate.until_next()

    def time_to_give_up(self, now: float) -> bool:
        return False
