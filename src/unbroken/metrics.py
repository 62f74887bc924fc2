"""Prometheus metrics, derived from telemetry events and read from the database at scrape time.

Two sources, so no number is counted twice or guessed:
- in-process events (`unbroken.telemetry`): attempts, durations, batches, fencing, rescues.
  They count what *this* process did; Prometheus sums across processes.
- the database, read by a collector when Prometheus scrapes: jobs by queue and state, the
  oldest waiting job, workers. Those are facts about the whole system, the same from every
  process, so only one process (or the dashboard) needs to expose them.
- pool statistics come from `Database.stats()` / `AsyncDatabase.stats()` at scrape time.

`install()` subscribes to the events (once per process) and optionally serves `/metrics`.
docs/metrics.md is generated from SPECS below (`python -m unbroken.metrics`); a test keeps
the two identical.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from unbroken import telemetry
from unbroken.db.stats import PoolStats
from unbroken.ops.store import OperatorStore
from unbroken.states import FAILED_OUTCOMES

logger = logging.getLogger("unbroken.metrics")

DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)
WAIT_BUCKETS = DURATION_BUCKETS[1:]  # a wait under 10 ms is one bucket
SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class Spec:
    kind: str  # counter | gauge | histogram
    name: str  # without the _total suffix prometheus_client adds to counters
    help: str
    labels: tuple[str, ...]
    source: str  # the event or the read it comes from


SPECS: tuple[Spec, ...] = (
    # --- from events, per process -----------------------------------------------------------
    Spec("counter", "unbroken_jobs_started", "Attempts started.", ("queue", "task"), "job.started"),
    Spec(
        "counter",
        "unbroken_jobs_processed",
        "Attempts finished, by outcome (succeeded, failed, dead, cancelled, snoozed, timeout, "
        "handback, unknown_task).",
        ("queue", "task", "outcome"),
        "job.finished",
    ),
    Spec(
        "counter",
        "unbroken_jobs_failed",
        "Attempts that failed (outcome failed, dead, timeout or unknown_task).",
        ("queue", "task"),
        "job.finished",
    ),
    Spec(
        "histogram",
        "unbroken_job_duration_seconds",
        "Run time of one attempt.",
        ("queue", "task"),
        "job.finished",
    ),
    Spec(
        "histogram",
        "unbroken_job_wait_seconds",
        "Enqueue (or due) time to start of an attempt.",
        ("queue",),
        "job.started",
    ),
    Spec(
        "histogram",
        "unbroken_batch_flush_size",
        "Status writes per batched flush.",
        ("kind",),
        "batch.flushed",
    ),
    Spec(
        "histogram",
        "unbroken_batch_flush_duration_seconds",
        "Time one batched flush took.",
        ("kind",),
        "batch.flushed",
    ),
    Spec(
        "counter",
        "unbroken_batch_failures",
        "Batched flushes that failed (then retried, then written one by one).",
        ("kind",),
        "batch.failed",
    ),
    Spec(
        "counter",
        "unbroken_fenced_writes",
        "Stale writes that changed nothing because the lease had moved on.",
        ("kind",),
        "write.fenced",
    ),
    Spec(
        "counter",
        "unbroken_jobs_rescued",
        "Running jobs rescued after their lease expired, by the state they went to.",
        ("state",),
        "job.rescued",
    ),
    Spec(
        "counter",
        "unbroken_jobs_promoted",
        "Scheduled or retryable jobs made available.",
        ("queue",),
        "job.promoted",
    ),
    Spec(
        "counter",
        "unbroken_jobs_pruned",
        "Finished jobs past the retention deleted by the leader, by state.",
        ("state",),
        "jobs.pruned",
    ),
    Spec("counter", "unbroken_jobs_fetched", "Jobs claimed by fetches.", (), "jobs.fetched"),
    Spec(
        "gauge",
        "unbroken_leader",
        "1 while this process leads the named role.",
        ("name",),
        "leader.changed",
    ),
    Spec(
        "counter",
        "unbroken_chunk_rows",
        "Rows committed by chunked jobs.",
        ("task",),
        "chunk.committed",
    ),
    Spec(
        "counter",
        "unbroken_chunk_failed_rows",
        "Rows chunked jobs recorded as failed.",
        ("task",),
        "chunk.committed",
    ),
    Spec(
        "histogram",
        "unbroken_chunk_commit_duration_seconds",
        "Time to process and commit one chunk.",
        ("task",),
        "chunk.committed",
    ),
    Spec(
        "counter",
        "unbroken_chunk_retries",
        "Chunks retried after an error.",
        ("task",),
        "chunk.retried",
    ),
    Spec(
        "counter",
        "unbroken_pool_flushes",
        "Pool flushes after a connection error (stale connections replaced at once).",
        ("role",),
        "pool.flushed",
    ),
    Spec(
        "counter",
        "unbroken_schedule_ticks_enqueued",
        "Ticks of periodic tasks this process enqueued (one job each).",
        ("schedule",),
        "schedule.ticked",
    ),
    Spec(
        "counter",
        "unbroken_schedule_ticks_missed",
        "Missed ticks of periodic tasks that the catch-up policy skipped (never enqueued).",
        ("schedule",),
        "schedule.ticked",
    ),
    Spec(
        "gauge",
        "unbroken_worker_memory_bytes",
        "This worker's resident memory, sampled while memory limits are set.",
        (),
        "worker.memory",
    ),
    Spec(
        "gauge",
        "unbroken_worker_memory_over_limit",
        "1 while this worker is above its soft (fetching held) or hard memory limit.",
        ("limit",),
        "worker.memory",
    ),
    # --- read from the database at scrape time ----------------------------------------------
    Spec("gauge", "unbroken_jobs", "Jobs by queue and state.", ("queue", "state"), "database"),
    Spec(
        "gauge",
        "unbroken_queue_oldest_wait_seconds",
        "Age of the oldest available job per queue.",
        ("queue",),
        "database",
    ),
    Spec("gauge", "unbroken_queue_paused", "1 when the queue is paused.", ("queue",), "database"),
    Spec(
        "gauge",
        "unbroken_workers",
        "Registered workers, by whether their heartbeat is recent.",
        ("status",),
        "database",
    ),
    Spec(
        "gauge",
        "unbroken_cdc_lag_bytes",
        "Source WAL a CDC pipeline has yet to apply, as of its last chunk.",
        ("pipeline",),
        "database",
    ),
    Spec(
        "gauge",
        "unbroken_cdc_lag_seconds",
        "Seconds since the commit of the last source transaction a CDC pipeline applied.",
        ("pipeline",),
        "database",
    ),
    Spec(
        "gauge",
        "unbroken_cdc_retained_wal_bytes",
        "WAL the source keeps for a CDC pipeline's slot (bounded by max_slot_wal_keep_size).",
        ("pipeline",),
        "database",
    ),
    Spec(
        "gauge",
        "unbroken_cdc_dead_letters",
        "Changes a CDC pipeline's sink refused or could not decode, kept in cdc_dead_letters.",
        ("pipeline",),
        "database",
    ),
    Spec(
        "gauge",
        "unbroken_scrape_success",
        "1 when the database read at this scrape worked.",
        (),
        "database",
    ),
    # --- pool statistics at scrape time -----------------------------------------------------
    Spec(
        "gauge",
        "unbroken_pool_connections",
        "Open pooled connections by state (idle, in_use).",
        ("role", "state"),
        "pool stats",
    ),
    Spec("gauge", "unbroken_pool_max_connections", "Pool size limit.", ("role",), "pool stats"),
    Spec(
        "gauge",
        "unbroken_pool_waiting",
        "Callers waiting for a connection now.",
        ("role",),
        "pool stats",
    ),
    Spec("counter", "unbroken_pool_requests", "Connection checkouts.", ("role",), "pool stats"),
    Spec(
        "counter",
        "unbroken_pool_wait_seconds",
        "Total time callers waited for a connection.",
        ("role",),
        "pool stats",
    ),
    Spec(
        "counter",
        "unbroken_pool_errors",
        "Checkouts or connection attempts that failed.",
        ("role",),
        "pool stats",
    ),
    Spec(
        "counter",
        "unbroken_pool_connections_lost",
        "Idle connections found dead and replaced.",
        ("role",),
        "pool stats",
    ),
    Spec(
        "counter",
        "unbroken_pool_dirty_returns",
        "Connections handed back inside a transaction (rolled back).",
        ("role",),
        "pool stats",
    ),
)


class Metrics:
    """The event-fed metrics of one process, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self._m: dict[str, Any] = {}
        for spec in SPECS:
            if spec.source in ("database", "pool stats"):
                continue  # produced by the collectors below
            if spec.kind == "counter":
                self._m[spec.name] = Counter(
                    spec.name, spec.help, spec.labels, registry=self.registry
                )
            elif spec.kind == "gauge":
                self._m[spec.name] = Gauge(
                    spec.name, spec.help, spec.labels, registry=self.registry
                )
            else:
                buckets = SIZE_BUCKETS if spec.name.endswith("_size") else DURATION_BUCKETS
                if spec.name == "unbroken_job_wait_seconds":
                    buckets = WAIT_BUCKETS
                self._m[spec.name] = Histogram(
                    spec.name, spec.help, spec.labels, registry=self.registry, buckets=buckets
                )
        self._collectors: list[Collector] = []

    def __getitem__(self, name: str) -> Any:
        return self._m[name]

    # --- events -------------------------------------------------------------------------
    def handle(self, name: str, f: dict[str, Any]) -> None:
        """The telemetry handler: one event in, a few observations out."""
        m = self._m
        if name == "job.started":
            queue, task = str(f.get("queue", "")), str(f.get("task", ""))
            m["unbroken_jobs_started"].labels(queue, task).inc()
            if isinstance(f.get("wait_s"), int | float):
                m["unbroken_job_wait_seconds"].labels(queue).observe(max(0.0, f["wait_s"]))
        elif name == "job.finished":
            queue, task = str(f.get("queue", "")), str(f.get("task", ""))
            outcome = str(f.get("outcome", "unknown"))
            m["unbroken_jobs_processed"].labels(queue, task, outcome).inc()
            if outcome in FAILED_OUTCOMES:
                m["unbroken_jobs_failed"].labels(queue, task).inc()
            if isinstance(f.get("duration_s"), int | float):
                m["unbroken_job_duration_seconds"].labels(queue, task).observe(f["duration_s"])
        elif name == "batch.flushed":
            kind = str(f.get("kind", ""))
            m["unbroken_batch_flush_size"].labels(kind).observe(f.get("size", 0))
            if isinstance(f.get("duration_s"), int | float):
                m["unbroken_batch_flush_duration_seconds"].labels(kind).observe(f["duration_s"])
        elif name == "batch.failed":
            m["unbroken_batch_failures"].labels(str(f.get("kind", ""))).inc()
        elif name == "write.fenced":
            m["unbroken_fenced_writes"].labels(str(f.get("kind", ""))).inc()
        elif name == "job.rescued":
            m["unbroken_jobs_rescued"].labels(str(f.get("state", ""))).inc()
        elif name == "job.promoted":
            m["unbroken_jobs_promoted"].labels(str(f.get("queue", ""))).inc(f.get("count", 1))
        elif name == "jobs.pruned":
            m["unbroken_jobs_pruned"].labels(str(f.get("state", ""))).inc(f.get("count", 0))
        elif name == "jobs.fetched":
            m["unbroken_jobs_fetched"].inc(f.get("count", 0))
        elif name == "leader.changed":
            m["unbroken_leader"].labels(str(f.get("name", ""))).set(1 if f.get("is_leader") else 0)
        elif name == "chunk.committed":
            task = str(f.get("task", ""))
            m["unbroken_chunk_rows"].labels(task).inc(f.get("rows", 0) or 0)
            m["unbroken_chunk_failed_rows"].labels(task).inc(f.get("failed", 0) or 0)
            if isinstance(f.get("duration_s"), int | float):
                m["unbroken_chunk_commit_duration_seconds"].labels(task).observe(f["duration_s"])
        elif name == "chunk.retried":
            m["unbroken_chunk_retries"].labels(str(f.get("task", ""))).inc()
        elif name == "pool.flushed":
            m["unbroken_pool_flushes"].labels(str(f.get("role", ""))).inc()
        elif name == "worker.memory":
            if isinstance(f.get("rss_mb"), int | float):
                m["unbroken_worker_memory_bytes"].set(f["rss_mb"] * 2**20)
            over = f.get("over")
            for limit in ("soft", "hard"):
                m["unbroken_worker_memory_over_limit"].labels(limit).set(
                    1 if over == limit or (over == "hard" and limit == "soft") else 0
                )
        elif name == "schedule.ticked":
            schedule = str(f.get("schedule", ""))
            m["unbroken_schedule_ticks_enqueued"].labels(schedule).inc(f.get("enqueued", 0) or 0)
            m["unbroken_schedule_ticks_missed"].labels(schedule).inc(f.get("missed", 0) or 0)

    # --- scrape-time reads --------------------------------------------------------------
    def watch_pools(self, stats: Callable[[], Sequence[PoolStats]]) -> None:
        """Expose pool statistics (pass `database.stats` of a Database or AsyncDatabase)."""
        self._add(PoolCollector(stats))

    def watch_database(self, store: OperatorStore, silent_after_s: float = 60.0) -> None:
        """Expose jobs by queue and state, queue ages and workers, read at each scrape."""
        self._add(DatabaseCollector(store, silent_after_s))

    def _add(self, collector: Collector) -> None:
        self.registry.register(collector)
        self._collectors.append(collector)

    def close(self) -> None:
        for collector in self._collectors:
            self.registry.unregister(collector)
        self._collectors.clear()
        for metric in self._m.values():
            self.registry.unregister(metric)


class PoolCollector(Collector):
    def __init__(self, stats: Callable[[], Sequence[PoolStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        conns = GaugeMetricFamily(*_doc("unbroken_pool_connections"), labels=["role", "state"])
        limit = GaugeMetricFamily(*_doc("unbroken_pool_max_connections"), labels=["role"])
        waiting = GaugeMetricFamily(*_doc("unbroken_pool_waiting"), labels=["role"])
        counters = {
            name: CounterMetricFamily(*_doc(name), labels=["role"])
            for name in (
                "unbroken_pool_requests",
                "unbroken_pool_wait_seconds",
                "unbroken_pool_errors",
                "unbroken_pool_connections_lost",
                "unbroken_pool_dirty_returns",
            )
        }
        for s in self._stats():
            conns.add_metric([s.role, "idle"], s.idle)
            conns.add_metric([s.role, "in_use"], s.in_use)
            limit.add_metric([s.role], s.max_size)
            waiting.add_metric([s.role], s.waiting)
            counters["unbroken_pool_requests"].add_metric([s.role], s.requests)
            counters["unbroken_pool_wait_seconds"].add_metric([s.role], s.wait_ms / 1000.0)
            counters["unbroken_pool_errors"].add_metric([s.role], s.errors)
            counters["unbroken_pool_connections_lost"].add_metric([s.role], s.connections_lost)
            counters["unbroken_pool_dirty_returns"].add_metric([s.role], s.dirty_returns)
        yield conns
        yield limit
        yield waiting
        yield from counters.values()


class DatabaseCollector(Collector):
    """Reads counts at scrape time; a failed read reports scrape_success 0, never raises."""

    def __init__(self, store: OperatorStore, silent_after_s: float = 60.0) -> None:
        self._store = store
        self._silent_after_s = silent_after_s
        self._lock = threading.Lock()  # two concurrent scrapes share one store

    def collect(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(*_doc("unbroken_scrape_success"))
        jobs = GaugeMetricFamily(*_doc("unbroken_jobs"), labels=["queue", "state"])
        oldest = GaugeMetricFamily(*_doc("unbroken_queue_oldest_wait_seconds"), labels=["queue"])
        paused = GaugeMetricFamily(*_doc("unbroken_queue_paused"), labels=["queue"])
        workers = GaugeMetricFamily(*_doc("unbroken_workers"), labels=["status"])
        cdc = {
            name: GaugeMetricFamily(*_doc(name), labels=["pipeline"])
            for name in (
                "unbroken_cdc_lag_bytes",
                "unbroken_cdc_lag_seconds",
                "unbroken_cdc_retained_wal_bytes",
                "unbroken_cdc_dead_letters",
            )
        }
        started = time.monotonic()
        try:
            with self._lock:
                counts = self._store.state_counts()
                queues = self._store.queue_list()
                found = self._store.worker_list(self._silent_after_s)
                pipelines = self._store.pipeline_list()
        except Exception as exc:  # a scrape must answer even when the database does not
            logger.warning("metrics: database read failed: %s: %s", type(exc).__name__, exc)
            success.add_metric([], 0)
            yield success
            return
        for c in counts:
            jobs.add_metric([c.queue, c.state], c.jobs)
        for q in queues:
            oldest.add_metric([q.name], q.oldest_wait_s or 0.0)
            paused.add_metric([q.name], 1 if q.paused else 0)
        silent = sum(1 for w in found if w.silent)
        workers.add_metric(["beating"], len(found) - silent)
        workers.add_metric(["silent"], silent)
        for p in pipelines:  # a figure the pipeline has not written yet is left out
            for name, value in (
                ("unbroken_cdc_lag_bytes", p.lag_bytes),
                ("unbroken_cdc_lag_seconds", p.lag_seconds),
                ("unbroken_cdc_retained_wal_bytes", p.retained_wal_bytes),
                ("unbroken_cdc_dead_letters", p.dead_letters),
            ):
                if value is not None:
                    cdc[name].add_metric([p.name], value)
        success.add_metric([], 1)
        logger.debug("metrics: database read in %.3f s", time.monotonic() - started)
        yield from (success, jobs, oldest, paused, workers, *cdc.values())


def _doc(name: str) -> tuple[str, str]:
    for spec in SPECS:
        if spec.name == name:
            return spec.name, spec.help
    raise KeyError(name)


_installed: tuple[Metrics, Callable[[], None]] | None = None
_install_lock = threading.Lock()


def install(
    *,
    port: int | None = None,
    addr: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    pools: Callable[[], Sequence[PoolStats]] | None = None,
    store: OperatorStore | None = None,
) -> Metrics:
    """Subscribe the metrics to telemetry (once per process) and optionally serve them.

    `port` starts prometheus-client's HTTP server on `addr` (loopback unless you say
    otherwise). `pools` (e.g. `database.stats`) and `store` add the scrape-time collectors.
    """
    global _installed
    with _install_lock:
        if _installed is None:
            metrics = Metrics(registry)
            _installed = (metrics, telemetry.subscribe(metrics.handle))
        metrics = _installed[0]
        if pools is not None:
            metrics.watch_pools(pools)
        if store is not None:
            metrics.watch_database(store)
        if port is not None:
            start_http_server(port, addr=addr, registry=metrics.registry)
        return metrics


def uninstall() -> None:
    """Unsubscribe and unregister everything `install` added (tests; a clean shutdown)."""
    global _installed
    with _install_lock:
        if _installed is not None:
            metrics, unsubscribe = _installed
            unsubscribe()
            metrics.close()
            _installed = None


def markdown_table() -> str:
    """docs/metrics.md's table, from SPECS."""
    lines = [
        "| metric | type | labels | source | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in SPECS:
        name = f"{s.name}_total" if s.kind == "counter" else s.name
        labels = ", ".join(f"`{label}`" for label in s.labels) or "-"
        lines.append(f"| `{name}` | {s.kind} | {labels} | {s.source} | {s.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
