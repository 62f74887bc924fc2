"""Optional Sentry and OpenTelemetry hooks, fed by telemetry events like the metrics.

Both are off unless their package is installed *and* configured by the application:
- Sentry: `sentry_sdk.init(...)` was called (an active client). Every failed attempt
  (outcome failed, dead, timeout or unknown_task) becomes one event tagged with task, job
  id, attempt and queue, the context teams otherwise add to each event by hand.
- OpenTelemetry: a real TracerProvider is set (not the API's default no-op proxy). Every
  attempt becomes one span `unbroken.job <task>` from job.started to job.finished, with the
  outcome as its status. The span is not made current inside the task (the events are
  emitted around the task, not within its context), so it is a sibling, not a parent, of
  spans the task opens.

`install()` turns on whatever is available and returns the names turned on.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from unbroken import telemetry
from unbroken.states import FAILED_OUTCOMES

logger = logging.getLogger("unbroken.integrations")


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# --- Sentry ---------------------------------------------------------------------------------
class SentryHandler:
    """Sends one Sentry event per failed attempt."""

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk

    def __call__(self, name: str, f: dict[str, Any]) -> None:
        if name != "job.finished" or f.get("outcome") not in FAILED_OUTCOMES:
            return
        tags = {
            "unbroken.task": str(f.get("task")),
            "unbroken.queue": str(f.get("queue")),
            "unbroken.job_id": str(f.get("job_id")),
            "unbroken.attempt": str(f.get("attempt")),
            "unbroken.outcome": str(f.get("outcome")),
        }
        error_type = str(f.get("error_type") or "JobFailed")
        message = str(f.get("error") or "")
        with self.sdk.new_scope() as scope:
            for key, value in tags.items():
                scope.set_tag(key, value)
            scope.set_context("unbroken job", dict(f))
            exc = f.get("exception")
            if isinstance(exc, BaseException):
                self.sdk.capture_exception(exc)
            else:
                # Group by task and error type, not by the message (it holds ids).
                self.sdk.capture_event(
                    {
                        "level": "error",
                        "message": f"{error_type}: {message}",
                        "exception": {"values": [{"type": error_type, "value": message}]},
                        "fingerprint": ["unbroken", tags["unbroken.task"], error_type],
                    }
                )


def sentry_configured(sdk: Any) -> bool:
    try:
        return bool(sdk.get_client().is_active())
    except Exception:
        return False


# --- OpenTelemetry --------------------------------------------------------------------------
class TracingHandler:
    """One span per attempt, keyed by (job id, attempt)."""

    def __init__(self, trace_api: Any) -> None:
        self.trace = trace_api
        self.tracer = trace_api.get_tracer("unbroken")
        self._open: dict[tuple[Any, Any], Any] = {}
        self._lock = threading.Lock()  # events come from executor threads and the loop

    def __call__(self, name: str, f: dict[str, Any]) -> None:
        key = (f.get("job_id"), f.get("attempt"))
        if name == "job.started":
            span = self.tracer.start_span(
                f"unbroken.job {f.get('task')}",
                kind=self.trace.SpanKind.CONSUMER,
                attributes={
                    "unbroken.task": str(f.get("task")),
                    "unbroken.queue": str(f.get("queue")),
                    "unbroken.job_id": str(f.get("job_id")),
                    "unbroken.attempt": int(f.get("attempt") or 0),
                    "unbroken.wait_s": float(f.get("wait_s") or 0.0),
                },
            )
            with self._lock:
                self._open[key] = span
        elif name == "job.finished":
            with self._lock:
                span = self._open.pop(key, None)
            if span is None:
                return
            outcome = str(f.get("outcome"))
            span.set_attribute("unbroken.outcome", outcome)
            if outcome in FAILED_OUTCOMES:
                span.set_status(
                    self.trace.Status(
                        self.trace.StatusCode.ERROR, f"{f.get('error_type')}: {f.get('error')}"
                    )
                )
            span.end(end_time=time.time_ns())

    def open_spans(self) -> int:
        with self._lock:
            return len(self._open)


def tracing_configured(trace_api: Any) -> bool:
    provider = trace_api.get_tracer_provider()
    # The API alone hands out a proxy (no-op until an SDK provider is set).
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


# --- switching on ---------------------------------------------------------------------------
_unsubscribers: list[Callable[[], None]] = []


def install() -> list[str]:
    """Subscribe the integrations whose package is installed and configured."""
    enabled = []
    sdk = _module("sentry_sdk")
    if sdk is not None and sentry_configured(sdk):
        _unsubscribers.append(telemetry.subscribe(SentryHandler(sdk)))
        enabled.append("sentry")
    trace_api = _module("opentelemetry.trace")
    if trace_api is not None and tracing_configured(trace_api):
        _unsubscribers.append(telemetry.subscribe(TracingHandler(trace_api)))
        enabled.append("opentelemetry")
    if enabled:
        logger.info("telemetry integrations on: %s", ", ".join(enabled))
    return enabled


def uninstall() -> None:
    while _unsubscribers:
        _unsubscribers.pop()()
