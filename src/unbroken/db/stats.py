"""Pool statistics readable from code, and naming the code that misused a connection."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_OUR_DIR = str(Path(__file__).resolve().parents[1])
_SKIP = (_OUR_DIR, "contextlib.py", "psycopg", "asyncio")


@dataclass(frozen=True)
class PoolStats:
    role: str
    size: int  # connections open now (idle + in use)
    idle: int
    in_use: int
    waiting: int  # callers queued for a connection right now
    max_size: int
    requests: int  # checkouts since start
    wait_ms: int  # total time callers spent queued
    errors: int  # checkouts that failed (timeout, refused)
    connections_lost: int  # idle connections found dead and replaced
    reconnects: int  # flushes after a connection-class error
    dirty_returns: int  # connections handed back inside a transaction (rolled back)

    @classmethod
    def from_pool(
        cls, role: str, raw: Mapping[str, int], flushes: int, dirty_returns: int
    ) -> PoolStats:
        size = raw.get("pool_size", 0)
        idle = raw.get("pool_available", 0)
        return cls(
            role=role,
            size=size,
            idle=idle,
            in_use=max(0, size - idle),
            waiting=raw.get("requests_waiting", 0),
            max_size=raw.get("pool_max", 0),
            requests=raw.get("requests_num", 0),
            wait_ms=raw.get("requests_wait_ms", 0),
            errors=raw.get("requests_errors", 0) + raw.get("connections_errors", 0),
            connections_lost=raw.get("connections_lost", 0),
            reconnects=flushes,
            dirty_returns=dirty_returns,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def caller_outside_unbroken() -> str:
    """'file.py:42 in handler' for the innermost frame that is not ours or the stdlib's."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not any(part in filename for part in _SKIP):
            return f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "unknown caller"
