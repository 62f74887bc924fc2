"""Metrics derive from telemetry events and scrape-time reads; the doc table matches them."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from unbroken import integrations, metrics, telemetry
from unbroken.db.stats import PoolStats
from unbroken.ops.rows import PriorityBacklog, QueueInfo, StateCount

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    metrics.install(registry=reg)
    yield reg
    metrics.uninstall()


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_events_become_counters_and_histograms(registry: CollectorRegistry) -> None:
    telemetry.emit("job.started", job_id=1, task="t", queue="q", attempt=1, wait_s=0.3)
    telemetry.emit(
        "job.finished",
        job_id=1,
        task="t",
        queue="q",
        attempt=1,
        outcome="succeeded",
        duration_s=0.2,
        error_type=None,
        error=None,
    )
    for outcome in ("failed", "dead", "snoozed"):
        telemetry.emit(
            "job.finished",
            job_id=2,
            task="t",
            queue="q",
            attempt=1,
            outcome=outcome,
            duration_s=1.5,
            error_type="ValueError",
            error="x",
        )
    assert value(registry, "unbroken_jobs_started_total", queue="q", task="t") == 1
    assert (
        value(registry, "unbroken_jobs_processed_total", queue="q", task="t", outcome="succeeded")
        == 1
    )
    assert (
        value(registry, "unbroken_jobs_processed_total", queue="q", task="t", outcome="snoozed")
        == 1
    )
    assert value(registry, "unbroken_jobs_failed_total", queue="q", task="t") == 2
    assert value(registry, "unbroken_job_duration_seconds_count", queue="q", task="t") == 4
    assert (
        value(registry, "unbroken_job_duration_seconds_bucket", queue="q", task="t", le="0.25") == 1
    )
    assert value(registry, "unbroken_job_wait_seconds_sum", queue="q") == pytest.approx(0.3)


def test_runtime_events(registry: CollectorRegistry) -> None:
    telemetry.emit("batch.flushed", kind="finish", size=50, duration_s=0.01)
    telemetry.emit("batch.flushed", kind="finish", size=3, duration_s=0.002)
    telemetry.emit("batch.failed", kind="lease", size=10, error_type="OperationalError")
    telemetry.emit("write.fenced", job_id=1, attempt=2, kind="finish")
    telemetry.emit("job.rescued", job_id=1, worker_id="w", state="retryable")
    telemetry.emit("job.promoted", queue="q", count=7)
    telemetry.emit("jobs.fetched", queue_count=1, count=4, free_slots=8)
    telemetry.emit("leader.changed", name="maintenance", holder="w", is_leader=True)
    telemetry.emit("chunk.committed", job_id=1, task="etl", rows=500, failed=2, duration_s=0.4)
    telemetry.emit("chunk.retried", job_id=1, task="etl", error_type="X", tries=1)
    telemetry.emit("pool.flushed", role="worker")
    assert value(registry, "unbroken_batch_flush_size_sum", kind="finish") == 53
    assert value(registry, "unbroken_batch_flush_size_bucket", kind="finish", le="5.0") == 1
    assert value(registry, "unbroken_batch_failures_total", kind="lease") == 1
    assert value(registry, "unbroken_fenced_writes_total", kind="finish") == 1
    assert value(registry, "unbroken_jobs_rescued_total", state="retryable") == 1
    assert value(registry, "unbroken_jobs_promoted_total", queue="q") == 7
    assert value(registry, "unbroken_jobs_fetched_total") == 4
    assert registry.get_sample_value("unbroken_leader", {"name": "maintenance"}) == 1
    assert value(registry, "unbroken_chunk_rows_total", task="etl") == 500
    assert value(registry, "unbroken_chunk_failed_rows_total", task="etl") == 2
    assert value(registry, "unbroken_chunk_retries_total", task="etl") == 1
    assert value(registry, "unbroken_pool_flushes_total", role="worker") == 1


def test_install_is_idempotent_and_uninstall_unsubscribes() -> None:
    reg = CollectorRegistry()
    first = metrics.install(registry=reg)
    assert metrics.install() is first  # a second install reuses the first
    metrics.uninstall()
    telemetry.emit("jobs.fetched", queue_count=1, count=4, free_slots=8)
    assert reg.get_sample_value("unbroken_jobs_fetched_total") is None  # unregistered


def pool_stats() -> list[PoolStats]:
    return [PoolStats("worker", 3, 1, 2, 1, 4, 120, 2500, 2, 1, 1, 0)]


def test_pool_collector_reads_stats_at_scrape_time(registry: CollectorRegistry) -> None:
    m = metrics.install(pools=pool_stats)
    assert m.registry is registry
    assert value(registry, "unbroken_pool_connections", role="worker", state="in_use") == 2
    assert value(registry, "unbroken_pool_connections", role="worker", state="idle") == 1
    assert value(registry, "unbroken_pool_max_connections", role="worker") == 4
    assert value(registry, "unbroken_pool_waiting", role="worker") == 1
    assert value(registry, "unbroken_pool_requests_total", role="worker") == 120
    assert value(registry, "unbroken_pool_wait_seconds_total", role="worker") == 2.5
    assert value(registry, "unbroken_pool_errors_total", role="worker") == 2


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def state_counts(self) -> list[StateCount]:
        if self.fail:
            raise OSError("database gone")
        return [StateCount("default", "available", 5), StateCount("default", "dead", 2)]

    def queue_list(self) -> list[QueueInfo]:
        return [
            QueueInfo("default", False, 5, 0, 0, 1, 2, 42.0, [PriorityBacklog(0, 5, 42.0)]),
            QueueInfo("reports", True, 0, 0, 0, 0, 0, None),
        ]

    def worker_list(self, silent_after_s: float = 60.0) -> list[Any]:
        return [types.SimpleNamespace(silent=False), types.SimpleNamespace(silent=True)]

    def pipeline_list(self) -> list[Any]:
        return [
            types.SimpleNamespace(
                name="orders", lag_bytes=10, lag_seconds=0.5, retained_wal_bytes=None,
                dead_letters=2,
            )
        ]  # fmt: skip


def test_database_collector_reads_counts(registry: CollectorRegistry) -> None:
    registry.register(metrics.DatabaseCollector(FakeStore()))  # type: ignore[arg-type]
    assert value(registry, "unbroken_scrape_success") == 1
    assert value(registry, "unbroken_jobs", queue="default", state="available") == 5
    assert value(registry, "unbroken_jobs", queue="default", state="dead") == 2
    assert value(registry, "unbroken_queue_oldest_wait_seconds", queue="default") == 42
    assert value(registry, "unbroken_queue_paused", queue="reports") == 1
    assert value(registry, "unbroken_cdc_lag_bytes", pipeline="orders") == 10
    assert value(registry, "unbroken_cdc_dead_letters", pipeline="orders") == 2
    assert value(registry, "unbroken_cdc_retained_wal_bytes", pipeline="orders") is None
    assert value(registry, "unbroken_workers", status="silent") == 1


def test_a_failed_database_read_still_answers_the_scrape(registry: CollectorRegistry) -> None:
    registry.register(metrics.DatabaseCollector(FakeStore(fail=True)))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "unbroken_scrape_success 0.0" in text
    assert "unbroken_jobs{" not in text


def test_names_follow_prometheus_conventions() -> None:
    for spec in metrics.SPECS:
        assert re.fullmatch(r"unbroken_[a-z][a-z0-9_]*", spec.name), spec.name
        assert not spec.name.endswith("_total"), "prometheus-client adds _total to counters"
        if "duration" in spec.name or "_wait_" in spec.name:
            assert spec.name.endswith("_seconds"), spec.name
        assert spec.help.endswith("."), spec.name
        assert "job_id" not in spec.labels  # unbounded label values would explode series
    names = [s.name for s in metrics.SPECS]
    assert len(names) == len(set(names))


def test_docs_table_is_generated_from_the_specs() -> None:
    doc = (ROOT / "docs/metrics.md").read_text()
    assert metrics.markdown_table() in doc, (
        "run: python -m unbroken.metrics > table in docs/metrics.md"
    )


# --- integrations --------------------------------------------------------------------------
class FakeScope:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.contexts: dict[str, Any] = {}

    def __enter__(self) -> FakeScope:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def set_context(self, key: str, value: Any) -> None:
        self.contexts[key] = value


class FakeSentry:
    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.scopes: list[FakeScope] = []
        self.events: list[dict[str, Any]] = []

    def get_client(self) -> Any:
        return types.SimpleNamespace(is_active=lambda: self.active)

    def new_scope(self) -> FakeScope:
        self.scopes.append(FakeScope())
        return self.scopes[-1]

    def capture_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def capture_exception(self, exc: BaseException) -> None:
        self.events.append({"exception": exc})


def test_sentry_gets_one_tagged_event_per_failed_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = FakeSentry()
    monkeypatch.setattr(integrations, "_module", lambda name: sdk if name == "sentry_sdk" else None)
    try:
        assert integrations.install() == ["sentry"]
        finished = {"job_id": 7, "task": "t", "queue": "q", "attempt": 2, "duration_s": 0.1}
        telemetry.emit("job.finished", **finished, outcome="succeeded", error_type=None, error=None)
        telemetry.emit(
            "job.finished", **finished, outcome="failed", error_type="KeyError", error="'x'"
        )
    finally:
        integrations.uninstall()
    assert len(sdk.events) == 1
    assert sdk.scopes[0].tags == {
        "unbroken.task": "t",
        "unbroken.queue": "q",
        "unbroken.job_id": "7",
        "unbroken.attempt": "2",
        "unbroken.outcome": "failed",
    }
    assert sdk.events[0]["exception"]["values"][0] == {"type": "KeyError", "value": "'x'"}
    assert sdk.events[0]["fingerprint"] == ["unbroken", "t", "KeyError"]


class FakeSpan:
    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name, self.attributes = name, dict(attributes)
        self.status: Any = None
        self.ended = False

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_status(self, status: Any) -> None:
        self.status = status

    def end(self, end_time: int | None = None) -> None:
        self.ended = True


def fake_trace_api() -> Any:
    spans: list[FakeSpan] = []

    class Tracer:
        def start_span(self, name: str, kind: Any = None, attributes: Any = None) -> FakeSpan:
            spans.append(FakeSpan(name, attributes or {}))
            return spans[-1]

    class TracerProvider:  # a real provider: not the API's proxy
        pass

    return types.SimpleNamespace(
        spans=spans,
        get_tracer=lambda name: Tracer(),
        get_tracer_provider=lambda: TracerProvider(),
        SpanKind=types.SimpleNamespace(CONSUMER="consumer"),
        StatusCode=types.SimpleNamespace(ERROR="error"),
        Status=lambda code, description: (code, description),
    )


def test_tracing_opens_and_closes_one_span_per_attempt() -> None:
    api = fake_trace_api()
    handler = integrations.TracingHandler(api)
    handler("job.started", {"job_id": 1, "task": "t", "queue": "q", "attempt": 1, "wait_s": 0.5})
    handler("job.started", {"job_id": 2, "task": "t", "queue": "q", "attempt": 1, "wait_s": 0})
    assert handler.open_spans() == 2
    handler("job.finished", {"job_id": 1, "attempt": 1, "outcome": "succeeded"})
    handler(
        "job.finished",
        {"job_id": 2, "attempt": 1, "outcome": "dead", "error_type": "ValueError", "error": "bad"},
    )
    assert handler.open_spans() == 0
    first, second = api.spans
    assert first.name == "unbroken.job t"
    assert first.ended
    assert first.status is None
    assert first.attributes["unbroken.outcome"] == "succeeded"
    assert second.status == ("error", "ValueError: bad")


def test_integrations_stay_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    inactive = FakeSentry(active=False)

    class ProxyTracerProvider:
        pass

    proxy_api = types.SimpleNamespace(get_tracer_provider=lambda: ProxyTracerProvider())
    modules = {"sentry_sdk": inactive, "opentelemetry.trace": proxy_api}
    monkeypatch.setattr(integrations, "_module", modules.get)
    assert integrations.install() == []
    monkeypatch.setattr(integrations, "_module", lambda name: None)  # not installed at all
    assert integrations.install() == []
