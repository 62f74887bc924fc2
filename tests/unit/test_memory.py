"""The memory guard's decisions, on a fake reading of the process's memory (no database)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from unbroken.errors import ConfigError
from unbroken.runtime.memory import MEMORY_EXIT_CODE, MemoryGuard, rss_bytes
from unbroken.settings import load_settings

MB = 2**20


class FakeExecutor:
    def __init__(self) -> None:
        self.running: dict[int, Any] = {}
        self.held: list[bool] = []

    def hold_fetching(self, held: bool) -> None:
        self.held.append(held)


def guard(readings: list[int], **limits: int) -> tuple[MemoryGuard, FakeExecutor, list[int]]:
    executor, exits = FakeExecutor(), []
    settings = SimpleNamespace(**{"memory_soft_mb": 0, "memory_hard_mb": 0, **limits})
    values = iter(readings)
    g = MemoryGuard(settings, executor, exits.append, read=lambda: next(values) * MB)  # type: ignore[arg-type]
    return g, executor, exits


def test_fetching_is_held_above_the_soft_limit_and_released_below_it() -> None:
    g, executor, exits = guard([100, 210, 220, 150, 90], memory_soft_mb=200, memory_hard_mb=300)
    assert [g.check() for _ in range(5)] == ["none", "soft", "soft", "none", "none"]
    assert executor.held == [True, False]  # once per crossing
    assert exits == []


def test_above_the_hard_limit_the_worker_is_told_to_exit_with_75() -> None:
    g, executor, exits = guard([250, 310], memory_soft_mb=200, memory_hard_mb=300)
    assert [g.check(), g.check()] == ["soft", "hard"]
    assert exits == [MEMORY_EXIT_CODE] == [75]
    assert executor.held[-1] is True


def test_a_hard_limit_alone_needs_no_soft_one() -> None:
    g, _, exits = guard([500, 1000], memory_hard_mb=800)
    assert [g.check(), g.check()] == ["none", "hard"]
    assert exits == [75]


def test_limits_off_by_default_and_this_process_rss_is_readable() -> None:
    assert not MemoryGuard(load_settings(), FakeExecutor(), print).enabled  # type: ignore[arg-type]
    rss = rss_bytes()
    assert rss is not None
    assert rss > MB


def test_a_soft_limit_not_below_the_hard_one_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNBROKEN_MEMORY_SOFT_MB", "600")
    monkeypatch.setenv("UNBROKEN_MEMORY_HARD_MB", "600")
    with pytest.raises(ConfigError, match=r"memory_soft_mb \(600\) must be below memory_hard_mb"):
        load_settings()
