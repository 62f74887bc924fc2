"""The benchmarks' app: no-op tasks, as small as a task can be.

Worker subprocesses (`python -m bench.worker`) import `app` from here, so its settings come
from their environment (UNBROKEN_DATABASE_URL, UNBROKEN_APPLICATION_NAME). The benchmark
process itself builds its own with `build(database_url=...)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import unbroken

NOOP_ASYNC = "bench.noop_async"
NOOP_SYNC = "bench.noop_sync"
STAMP = "bench.stamp"


@dataclass(frozen=True)
class BenchApp:
    app: unbroken.App
    noop_async: unbroken.Task[[], None]
    noop_sync: unbroken.Task[[], None]
    stamp: unbroken.Task[[], float]

    def task(self, kind: str) -> unbroken.Task[[], Any]:
        return {"async": self.noop_async, "sync": self.noop_sync, "stamp": self.stamp}[kind]


def build(**settings: Any) -> BenchApp:
    app = unbroken.App(**settings)

    @app.task(name=NOOP_ASYNC)
    async def noop_async() -> None:
        return None

    @app.task(name=NOOP_SYNC)
    def noop_sync() -> None:
        return None

    @app.task(name=STAMP)
    async def stamp() -> float:
        """The wall clock when the task body began (the latency benchmark reads it back)."""
        return time.time()

    return BenchApp(app, noop_async, noop_sync, stamp)


def __getattr__(name: str) -> Any:
    # `app` is built on first access, so importing this module reads no settings.
    if name == "app":
        built = build().app
        globals()["app"] = built
        return built
    raise AttributeError(name)
