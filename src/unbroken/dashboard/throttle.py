"""Failed logins, throttled: per client address, and over all clients together.

In process memory (one dashboard process; several processes each keep their own count).
A client's first `free_failures` wrong passwords cost nothing (typos); every further one
locks that address out for a delay that doubles, from `base_delay` up to `max_delay`. Over
all addresses, at most `global_per_minute` failures a minute are checked; past that every
attempt waits until the oldest of them is a minute old. An address is forgotten a day
after its last failure (sooner only if `max_clients` addresses are being tracked), so
waiting out a lock does not reset its count. While an address or the whole
dashboard is throttled, credentials are not even checked (a right password is refused
too), so a throttled guesser learns nothing. A success clears its address's count.

Behind a reverse proxy every client has the proxy's address: the per-client and the
global limit then act alike.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 60.0  # seconds the global count looks back


@dataclass
class _Client:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """How long a client must wait before its credentials are checked again."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 900.0,
        global_per_minute: int = 60,
        forget_after: float = 86400.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._recent: deque[float] = deque(maxlen=max(1, global_per_minute))

    def wait(self, client: str) -> float:
        """Seconds before `client`'s credentials may be checked (0.0: now)."""
        with self._lock:
            now = self._clock()
            entry = self._clients.get(client)
            mine = entry.locked_until - now if entry else 0.0
            full = len(self._recent) == self._recent.maxlen
            everyone = self._recent[0] + WINDOW - now if full else 0.0
            return max(0.0, mine, everyone)

    def failed(self, client: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent.append(now)
            entry = self._clients.get(client)
            if entry is None or now - entry.last > self.forget_after:
                self._forget_old(now)
                entry = self._clients[client] = _Client()
            entry.failures += 1
            entry.last = now
            beyond = entry.failures - self.free_failures
            if beyond > 0:
                delay = self.base_delay * 2.0 ** min(beyond - 1, 32)
                entry.locked_until = now + min(delay, self.max_delay)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def _forget_old(self, now: float) -> None:
        """Keep the table bounded: drop quiet clients, then the longest quiet if still full."""
        if len(self._clients) < self.max_clients:
            return
        for name in [n for n, c in self._clients.items() if now - c.last > self.forget_after]:
            del self._clients[name]
        while len(self._clients) >= self.max_clients:
            del self._clients[min(self._clients, key=lambda n: self._clients[n].last)]
