"""Worker memory limits with real worker processes (tests/apps/jobapi_app.py): above the
soft limit the worker fetches nothing more; above the hard one it hands its running jobs
back unspent and exits with code 75; `--restart-on-memory` starts a new one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.harness import FAST_SETTINGS, Probe, StartWorker, insert_jobs, wait_until
from apps.harness import worker_processes as processes
from unbroken.runtime.memory import MEMORY_EXIT_CODE

SOFT, HARD = 300, 450  # MiB; an idle worker process is far below (checked)
LIMITS: dict[str, Any] = {**FAST_SETTINGS, "memory_soft_mb": SOFT, "memory_hard_mb": HARD}


@pytest.fixture
def start(database_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    with processes(database_url, tmp_path, "tests.apps.jobapi_app:app") as start:
        yield start


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _beats(probe: Probe, worker_id: str) -> Any:
    return probe.value("SELECT heartbeat_at FROM unbroken.workers WHERE id = %s", [worker_id])


def test_soft_limit_stops_fetching_and_hard_limit_hands_back_and_exits_75(
    probe: Probe, start: StartWorker, tmp_path: Path
) -> None:
    gate = tmp_path / "grow-past-hard"
    w = start("w", **LIMITS)
    worker_id = w.wait_registered(probe)
    assert _rss_mb(w.pid) < SOFT - 50, "the limits of this test assume a small idle worker"
    [hog] = insert_jobs(
        probe, "grow", kwargs={"soft_mb": SOFT + 20, "hard_mb": HARD + 20, "gate": str(gate)}
    )
    wait_until(lambda: "above the soft limit" in w.log_flat(), timeout=60, what="soft limit")
    fetches = probe.fetches()
    quick = insert_jobs(probe, "quick", n=3)
    # Three heartbeats later (each over a poll interval apart) nothing more was fetched.
    for _ in range(3):
        seen = _beats(probe, worker_id)
        wait_until(lambda: _beats(probe, worker_id) != seen, timeout=30, what="a heartbeat")  # noqa: B023
    assert probe.fetches() == fetches
    assert [probe.state(j) for j in quick] == ["available"] * 3
    assert "fetching no more jobs" in w.log_flat()

    gate.touch()
    assert w.wait_exit(timeout=60) == MEMORY_EXIT_CODE
    assert "above the hard limit" in w.log_flat()
    row = probe.job(hog)
    assert (row["state"], row["attempt"], row["worker_id"]) == ("available", 0, None), row
    assert (row["rescues"], row["errors"]) == (0, [])
    assert row["progress"]["message"] == "past hard"  # sent with the hand-back
    assert [(probe.job(j)["state"], probe.job(j)["attempt"]) for j in quick] == [
        ("available", 0)
    ] * 3
    assert probe.value("SELECT count(*) FROM unbroken.workers") == 0  # deregistered

    # A new worker takes them; the hog's next attempt sees where the last one got.
    w2 = start("w2", **FAST_SETTINGS)
    row = probe.wait_state(hog, "succeeded", timeout=60)
    assert (row["attempt"], row["result"]) == (1, "survived")
    for j in quick:
        assert probe.wait_state(j, "succeeded", timeout=60)["result"] == w2.pid
    assert w2.stop() == 0


def test_restart_on_memory_starts_a_new_worker_that_takes_the_jobs_back(
    probe: Probe, start: StartWorker, tmp_path: Path
) -> None:
    gate = tmp_path / "grow-past-hard"
    gate.touch()  # straight past both limits
    [hog] = insert_jobs(
        probe, "grow", kwargs={"soft_mb": SOFT + 20, "hard_mb": HARD + 20, "gate": str(gate)}
    )
    quick = insert_jobs(probe, "quick", n=3)
    parent = start("parent", ("--restart-on-memory",), **{**LIMITS, "concurrency": 1})
    row = probe.wait_state(hog, "succeeded", timeout=90)
    assert (row["attempt"], row["rescues"], row["result"]) == (1, 0, "survived")
    pids = {probe.wait_state(j, "succeeded", timeout=60)["result"] for j in quick}
    log = parent.log_flat()
    assert "exited for its memory limit; starting a new one" in log, log
    assert parent.pid not in pids  # the jobs ran in the child, not in the supervisor
    assert parent.stop() == 0  # SIGTERM reaches the child, which shuts down cleanly
