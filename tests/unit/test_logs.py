"""Per-job log lines (unbroken.logs) for every outcome the database can record, and the two
formats, without a database: the integration test (test_job_logs.py) reads them from real
worker processes."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from unbroken import logs
from unbroken.cli.main import setup_logging
from unbroken.errors import ConfigError
from unbroken.runtime.completer import Outcome
from unbroken.states import JobState, OutcomeKind

WORKER = "host:1:abc"


def error(type_: str, message: str, kind: str) -> str:
    return json.dumps({"attempt": 1, "type": type_, "message": message, "kind": kind})


def outcome(kind: str, state: str, **kw: Any) -> Outcome:
    return Outcome(
        42, 2, "claim", JobState(state), OutcomeKind(kind), "mail", "app.send", max_attempts=5, **kw
    )


def line(
    caplog: pytest.LogCaptureFixture, o: Outcome, recorded: str
) -> tuple[logging.LogRecord, dict[str, Any]]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="unbroken.jobs"):
        logs.outcome(o, JobState(recorded), WORKER)
    [record] = caplog.records
    return record, record.unbroken  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("o", "recorded", "level", "event", "reason", "text"),
    [
        (
            outcome("succeeded", "succeeded", runtime_ms=1500),
            "succeeded",
            logging.DEBUG,
            "succeeded",
            None,
            "job 42 app.send attempt 2/5 succeeded in 1.500 s",
        ),
        (
            outcome("failed", "retryable", delay=3.14, error=error("ValueError", "boom", "error")),
            "retryable",
            logging.WARNING,
            "failed",
            "error",
            "job 42 app.send attempt 2/5 failed: ValueError: boom; retry in 3.1 s",
        ),
        (  # the worker asked for a retry; the row had no attempt left
            outcome("failed", "retryable", delay=3.0, error=error("ValueError", "boom", "error")),
            "dead",
            logging.ERROR,
            "dead",
            "error",
            "job 42 app.send attempt 2/5 failed: ValueError: boom; dead: no attempt left",
        ),
        (
            outcome("dead", "dead", error=error("Permanent", "bad input", "permanent")),
            "dead",
            logging.ERROR,
            "dead",
            "permanent",
            "job 42 app.send attempt 2/5 failed: Permanent: bad input; dead: a permanent "
            "error, not retried",
        ),
        (
            outcome(
                "timeout", "retryable", delay=12.0, error=error("Timeout", "over 5 s", "timeout")
            ),
            "retryable",
            logging.WARNING,
            "failed",
            "timeout",
            "job 42 app.send attempt 2/5 failed: Timeout: over 5 s; retry in 12 s",
        ),
        (
            outcome("cancelled", "cancelled", error=error("JobCancelled", "", "cancelled")),
            "cancelled",
            logging.INFO,
            "cancelled",
            "cancelled",
            "job 42 app.send attempt 2/5 cancelled: it stopped at the cancel request",
        ),
        (  # asked for a retry, but a cancel was requested meanwhile
            outcome("failed", "retryable", delay=1.0, error=error("OSError", "down", "error")),
            "cancelled",
            logging.INFO,
            "cancelled",
            "cancel_requested",
            "job 42 app.send attempt 2/5 failed: OSError: down; cancelled: a cancel was requested",
        ),
        (
            outcome("snoozed", "scheduled", delay=60.0),
            "scheduled",
            logging.DEBUG,
            "snoozed",
            "snoozed",
            "job 42 app.send attempt 2/5 snoozed for 60 s (attempt not spent)",
        ),
        (
            outcome("handback", "available"),
            "available",
            logging.INFO,
            "handed_back",
            "handback",
            "job 42 app.send attempt 2/5 handed back unfinished at shutdown (attempt not spent)",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_each_recorded_outcome_has_its_line(
    caplog: pytest.LogCaptureFixture,
    o: Outcome,
    recorded: str,
    level: int,
    event: str,
    reason: str | None,
    text: str,
) -> None:
    record, fields = line(caplog, o, recorded)
    assert record.getMessage() == text
    assert record.levelno == level
    assert record.name == "unbroken.jobs"
    assert (fields["event"], fields["state"], fields["reason"]) == (event, recorded, reason)
    assert (fields["job_id"], fields["task"], fields["queue"]) == (42, "app.send", "mail")
    assert (fields["attempt"], fields["max_attempts"], fields["worker"]) == (2, 5, WORKER)


def test_an_unknown_task_line_says_what_happens_and_what_to_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    o = outcome(
        "unknown_task",
        "scheduled",
        delay=61.2,
        error=error("TaskNotFound", "no task named 'app.send'", "unknown_task"),
    )
    record, fields = line(caplog, o, "scheduled")
    assert record.levelno == logging.ERROR
    assert (fields["event"], fields["reason"], fields["delay"]) == (
        "task_not_found",
        "unknown_task",
        61.2,
    )
    assert record.getMessage().startswith(
        f"job 42 app.send attempt 2/5 (queue mail): no task named 'app.send' in this "
        f"worker's app (worker {WORKER}); it will be offered again in 61 s, attempt not spent"
    )
    assert "module imported by the worker's app" in record.getMessage()


def test_an_error_message_is_one_short_line_in_plain_and_whole_in_json(
    caplog: pytest.LogCaptureFixture,
) -> None:
    long = "first line " + "x" * 1000 + "\nsecond line"
    record, fields = line(
        caplog,
        outcome("failed", "retryable", delay=1, error=error("E", long, "error")),
        "retryable",
    )
    assert "\n" not in record.getMessage()
    assert len(record.getMessage()) < 600
    assert fields["error"] == f"E: {long}"


def test_lines_below_the_level_are_not_built(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="unbroken.jobs"):
        logs.outcome(outcome("succeeded", "succeeded"), "succeeded", WORKER)
        logs.outcome(outcome("snoozed", "scheduled", delay=1), "scheduled", WORKER)
        logs.started(1, "t", "q", 1, 3, WORKER)
    assert caplog.records == []


def test_fenced_and_rescued_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="unbroken.jobs"):
        logs.fenced(outcome("failed", "retryable"), WORKER)
        logs.rescued(7, "app.sync", "etl", 3, 3, "dead", "other:2:def")
    fenced, rescued = caplog.records
    assert fenced.getMessage() == (
        "job 42 app.send attempt 2/5: outcome failed not recorded, the job moved on "
        "(rescued, cancelled or retried elsewhere)"
    )
    assert fenced.unbroken["event"] == "fenced"  # type: ignore[attr-defined]
    assert rescued.levelno == logging.WARNING
    assert rescued.getMessage() == (
        "job 7 app.sync attempt 3/3 rescued: lease expired: worker other:2:def stopped "
        "renewing it; now dead"
    )
    assert rescued.unbroken["worker"] == "other:2:def"  # type: ignore[attr-defined]


def make_record(message: str, fields: dict[str, Any] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("unbroken.worker", logging.INFO, __file__, 1, message, (), None)
    record.created = 1_700_000_000.25
    if fields is not None:
        record.unbroken = fields
    return record


def test_json_lines_have_the_same_keys_with_or_without_a_job() -> None:
    fmt = logs.JsonFormatter()
    plain = json.loads(fmt.format(make_record("worker started")))
    assert list(plain) == list(logs.JSON_KEYS)
    assert plain["ts"] == "2023-11-14T22:13:20.250Z"
    assert (plain["level"], plain["logger"], plain["message"]) == (
        "INFO",
        "unbroken.worker",
        "worker started",
    )
    assert all(plain[k] is None for k in logs.JSON_KEYS[5:])
    job = json.loads(fmt.format(make_record("job 1", {"event": "dead", "job_id": 1})))
    assert list(job) == list(logs.JSON_KEYS)
    assert (job["event"], job["job_id"]) == ("dead", 1)


def test_json_keeps_an_exception_inside_its_one_line() -> None:
    try:
        raise RuntimeError("inner")
    except RuntimeError:
        import sys

        record = make_record("failed")
        record.exc_info = sys.exc_info()
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    assert "RuntimeError: inner" in json.loads(text)["message"]


def test_plain_is_one_line_per_record() -> None:
    text = logs.PlainFormatter().format(make_record("worker started"))
    assert text == "2023-11-14T22:13:20.250Z INFO unbroken.worker: worker started"


def test_setup_logging_verbose_and_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.delenv("UNBROKEN_LOG_FORMAT", raising=False)
    monkeypatch.delenv("UNBROKEN_LOG_LEVEL", raising=False)
    try:
        setup_logging(verbose=False, log_format="json")
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert not logs.JOBS.isEnabledFor(logging.DEBUG)
        setup_logging(verbose=True)
        assert logs.JOBS.isEnabledFor(logging.DEBUG)
        monkeypatch.setenv("UNBROKEN_LOG_FORMAT", "xml")
        with pytest.raises(ConfigError, match="UNBROKEN_LOG_FORMAT: must be plain or json"):
            setup_logging()
    finally:
        logging.getLogger("unbroken").setLevel(logging.NOTSET)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
