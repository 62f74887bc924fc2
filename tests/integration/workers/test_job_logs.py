"""The worker's per-job log lines, read from real worker processes' output.

Two workers run `tests.apps.fault_app:app`: "quiet" (no -v) on queue default, and "loud"
(`-v`) on queue verbose. Between them they produce each kind of line: a failure with a
retry, a dead letter, an unknown task, a rescue (the quiet worker is SIGKILLed while it
holds a job; the loud one, then the leader, rescues it), and, only from the loud one, the
starts and successes. Each test runs the scenario in one format: plain (one line per
record, "job 42 fail attempt 1/2 failed: ValueError: boom; retry in 0.1 s") or JSON (every
line one object with the same keys). The format comes from UNBROKEN_LOG_FORMAT for the
quiet worker and from `--log-format` for the loud one.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from typing import Any

import pytest

from apps.harness import Probe, StartWorker, WorkerProcess, insert_jobs, wait_until

FAST = {
    "lease_seconds": 3.0,
    "rescue_interval": 0.5,
    "promote_interval": 0.1,
    "poll_interval": 0.2,
    "heartbeat_interval": 0.5,
}
# Every JSON line has these keys, null where they do not apply (README, "Logging").
JSON_KEYS = {
    "ts", "level", "logger", "event", "message", "job_id", "task", "queue", "attempt",
    "max_attempts", "state", "reason", "error", "delay", "worker",
}  # fmt: skip


@dataclass
class Scenario:
    quiet: WorkerProcess
    loud: WorkerProcess
    failing: int  # fails twice: a retry, then dead
    unknown: int  # a task no worker knows
    ok: int  # succeeds on the quiet worker
    seen: int  # succeeds on the loud worker
    held: int  # running on the quiet worker when it is killed; rescued by the loud one


def run_scenario(probe: Probe, start: StartWorker, fmt: str) -> Scenario:
    quiet = start("quiet", **FAST, **({"log_format": fmt} if fmt != "plain" else {}))
    loud = start("loud", cli_args=("-v", "--log-format", fmt), queues="verbose", **FAST)
    quiet.wait_registered(probe)
    loud.wait_registered(probe)
    [failing] = insert_jobs(probe, "fail", args=["boom"], max_attempts=2)
    [unknown] = insert_jobs(probe, "nowhere.task")
    [ok] = insert_jobs(probe, "record")
    [seen] = insert_jobs(probe, "record", queue="verbose")
    [held] = insert_jobs(probe, "record", kwargs={"seconds": 120})
    probe.wait_state(failing, "dead", timeout=30)
    probe.wait_state(ok, "succeeded", timeout=30)
    probe.wait_state(seen, "succeeded", timeout=30)
    wait_until(lambda: probe.job(unknown)["errors"], timeout=30, what="the unknown task's error")
    wait_until(lambda: probe.executions(held), timeout=30, what="the held job to start")
    assert probe.job(held)["worker_id"] == quiet.worker_id
    quiet.signal(signal.SIGKILL)
    quiet.wait_exit(30)
    wait_until(lambda: probe.job(held)["rescues"] == 1, timeout=60, what="the held job's rescue")
    return Scenario(quiet, loud, failing, unknown, ok, seen, held)


def lines_with(worker: WorkerProcess, text: str) -> list[str]:
    """The log lines containing `text`, once the worker has written at least one."""
    return wait_until(
        lambda: [line for line in worker.log().splitlines() if text in line],
        timeout=30,
        what=f"a line with {text!r} in {worker.name}'s log",
    )


def test_plain_lines_name_the_job_the_attempt_and_the_reason(
    probe: Probe, workers: StartWorker
) -> None:
    s = run_scenario(probe, workers, "plain")
    quiet, loud = s.quiet, s.loud

    [retry] = lines_with(quiet, f"job {s.failing} fail attempt 1/2 failed")
    assert " WARNING " in retry
    assert re.search(r"failed: ValueError: boom; retry in 0\.1 s$", retry), retry
    [dead] = lines_with(quiet, f"job {s.failing} fail attempt 2/2 failed")
    assert " ERROR " in dead
    assert dead.endswith("failed: ValueError: boom; dead: no attempt left"), dead

    [unknown] = lines_with(quiet, f"job {s.unknown} nowhere.task")
    assert " ERROR " in unknown
    for part in (
        "attempt 1/20 (queue default)",
        "no task named 'nowhere.task' in this worker's app",
        f"(worker {quiet.worker_id})",
        "offered again in ",
        "attempt not spent",
        "imported by the worker",
    ):
        assert part in unknown, (part, unknown)

    [rescued] = lines_with(loud, f"job {s.held} record attempt 1/20 rescued")
    assert " WARNING " in rescued
    assert f"lease expired: worker {quiet.worker_id} stopped renewing it; now retryable" in (
        rescued
    )

    # Starts and successes: only with -v.
    assert lines_with(loud, f"job {s.seen} record attempt 1/20 started (queue verbose")
    [succeeded] = lines_with(loud, f"job {s.seen} record attempt 1/20 succeeded in ")
    assert " DEBUG " in succeeded
    quiet_log = quiet.log()
    assert f"job {s.ok} " not in quiet_log
    assert " started " not in quiet_log
    assert " succeeded " not in quiet_log
    assert loud.stop() == 0, loud.log()[-3000:]
    assert "Traceback" not in quiet_log + loud.log()


def records(worker: WorkerProcess) -> list[dict[str, Any]]:
    """Every line of the worker's output as JSON (a line that is not JSON fails the test)."""
    found = []
    for line in worker.log().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line in {worker.name}'s log: {line!r}") from None
    return found


def record_of(worker: WorkerProcess, event: str, job_id: int, **fields: Any) -> dict[str, Any]:
    def matching() -> list[dict[str, Any]]:
        return [
            r
            for r in records(worker)
            if r["event"] == event
            and r["job_id"] == job_id
            and all(r[k] == v for k, v in fields.items())
        ]

    [found] = wait_until(matching, timeout=30, what=f"{event} of job {job_id} in {worker.name}")
    return found


def test_json_lines_carry_fixed_keys(probe: Probe, workers: StartWorker) -> None:
    s = run_scenario(probe, workers, "json")
    quiet, loud = s.quiet, s.loud
    for r in records(quiet) + records(loud):
        assert set(r) == JSON_KEYS, r

    retry = record_of(quiet, "failed", s.failing, attempt=1)
    assert retry["level"] == "WARNING"
    assert retry["logger"] == "unbroken.jobs"
    assert (retry["task"], retry["queue"], retry["max_attempts"]) == ("fail", "default", 2)
    assert (retry["state"], retry["reason"]) == ("retryable", "error")
    assert retry["error"] == "ValueError: boom"
    assert retry["delay"] == pytest.approx(0.1)
    assert retry["worker"] == quiet.worker_id
    assert retry["message"].startswith(f"job {s.failing} fail attempt 1/2 failed")
    assert retry["ts"].endswith("Z")

    dead = record_of(quiet, "dead", s.failing, attempt=2)
    assert dead["level"] == "ERROR"
    assert (dead["state"], dead["reason"], dead["delay"]) == ("dead", "error", None)
    assert dead["error"] == "ValueError: boom"

    unknown = record_of(quiet, "task_not_found", s.unknown)
    assert unknown["level"] == "ERROR"
    assert (unknown["task"], unknown["attempt"], unknown["state"]) == (
        "nowhere.task",
        1,
        "scheduled",
    )
    assert unknown["reason"] == "unknown_task"
    assert 30 <= unknown["delay"] <= 90  # the first delay: 60 s, jittered
    assert unknown["worker"] == quiet.worker_id

    rescued = record_of(loud, "rescued", s.held)
    assert rescued["level"] == "WARNING"
    assert (rescued["task"], rescued["attempt"], rescued["max_attempts"]) == ("record", 1, 20)
    assert (rescued["state"], rescued["reason"]) == ("retryable", "lease_expired")
    assert rescued["worker"] == quiet.worker_id  # the worker that lost it

    started = record_of(loud, "started", s.seen)
    succeeded = record_of(loud, "succeeded", s.seen)
    assert started["level"] == succeeded["level"] == "DEBUG"
    assert succeeded["state"] == "succeeded"
    assert not [r for r in records(quiet) if r["event"] in ("started", "succeeded")]
    assert not [r for r in records(quiet) if r["job_id"] == s.ok]
    assert loud.stop() == 0, loud.log()[-3000:]
