"""The operator store against a real database: filters, bulk actions, groups, stats, health."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ops_seed import HOSTILE, Seeded, seed
from unbroken import migrations
from unbroken.db._sync.pool import Database
from unbroken.errors import ConfigError
from unbroken.ops import health
from unbroken.ops.filters import JobFilter, parse_duration
from unbroken.ops.rows import ProgressView
from unbroken.ops.store import DeadLetterFilter, OperatorStore, statement
from unbroken.settings import load_settings
from unbroken.sql import HERE, queries


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def seeded(conn: psycopg.Connection[Any]) -> Seeded:
    return seed(conn)


@pytest.fixture
def store(conn: psycopg.Connection[Any], seeded: Seeded) -> OperatorStore:
    return OperatorStore(conn)


def state_of(conn: psycopg.Connection[Any], job_id: int) -> str:
    row = conn.execute("SELECT state::text FROM unbroken.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return str(row[0])


def ids(rows: list[Any]) -> set[int]:
    return {r.id for r in rows}


def test_filters_narrow_the_list(store: OperatorStore, seeded: Seeded) -> None:
    everything = store.job_list(JobFilter(), limit=100)
    assert [j.id for j in everything] == sorted(ids(everything), reverse=True)  # newest first
    dead = store.job_list(JobFilter.build(state="dead"))
    assert ids(dead) == {*seeded.dead_http, seeded.dead_hostile}
    assert dead[0].last_error_type in ("ValueError", "HTTPError")
    both = store.job_list(JobFilter.build(state="dead,cancelled", queue="default"))
    assert ids(both) == {seeded.dead_hostile, seeded.cancelled}
    assert ids(store.job_list(JobFilter.build(task="sync.issues", state="running"))) == {
        seeded.running
    }
    # Arguments: a JSON object matches by containment, other text by substring.
    assert ids(store.job_list(JobFilter.build(args='{"user_id": 2}'))) == {seeded.available[1]}
    assert ids(store.job_list(JobFilter.build(args="<script>"))) == {seeded.dead_hostile}
    # Age: the three available jobs were created 8 minutes ago, the rest just now.
    old = store.job_list(JobFilter.build(older_than="5m"))
    assert ids(old) == set(seeded.available)
    assert store.job_count(JobFilter.build(older_than="5m")) == 3


def test_pages_by_id(store: OperatorStore) -> None:
    first = store.job_list(JobFilter(), limit=5)
    second = store.job_list(JobFilter(), limit=5, before_id=first[-1].id)
    assert len(first) == len(second) == 5
    assert max(ids(second)) < min(ids(first))


def test_shared_conditions_are_written_once_and_composed_in() -> None:
    admin_sql = (HERE / "admin.sql").read_text()
    for fragment, users in {
        "job_filter_indexed": (
            "job_search",
            "job_count_upto",
            "job_count_matching",
            "job_ids_matching",
        ),
        "job_filter_searched": (
            "job_search",
            "job_count_upto",
            "job_count_matching",
            "job_ids_matching",
        ),
        "dead_letter_filter": ("dead_letter_ids", "dead_letter_count"),
    }.items():
        condition = queries("unbroken")[fragment].decode()
        assert admin_sql.count(condition.strip()) == 1, fragment
        for name in users:
            composed = statement("unbroken", name)
            assert isinstance(composed, sql.Composed), name
            text = composed.as_string()
            assert condition in text, name
            assert "{" not in text, name
    assert statement("unbroken", "worker_list") == queries("unbroken")["worker_list"]


def test_bad_filters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown job state 'deadd'"):
        JobFilter.build(state="deadd")
    with pytest.raises(ConfigError, match="not a duration"):
        JobFilter.build(older_than="soon")
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90") == 90


def test_job_detail_has_every_attempt_and_progress(store: OperatorStore, seeded: Seeded) -> None:
    dead = store.job_get(seeded.dead_http[0])
    assert dead is not None
    assert [e.attempt for e in dead.errors] == [1, 2, 3]
    assert dead.errors[0].type == "HTTPError"
    assert dead.errors[0].traceback is not None
    assert "Traceback" in dead.errors[0].traceback
    running = store.job_get(seeded.running)
    assert running is not None
    view = running.progress_view()
    assert view is not None
    assert view.fraction == pytest.approx(0.423)  # (processed + failed) / total
    assert view.rate == 120.5
    assert view.eta_s == 4.8
    assert view.checkpoint_age_s is not None
    assert 4 <= view.checkpoint_age_s < 60
    assert running.checkpoint == {"cursor": 420}
    assert store.job_get(999_999) is None


def test_progress_view_reads_the_chunk_runners_keys() -> None:
    view = ProgressView.from_json(
        {
            "position": 250,
            "processed": 240,
            "failed": 10,
            "total": 1000,
            "eta_seconds": 12.5,
            "chunks": 5,
            "done": False,
        }
    )
    assert view is not None
    assert view.fraction == 0.25
    assert view.eta_s == 12.5
    assert view.extra == {"chunks": 5}
    assert ProgressView.from_json(None) is None
    finished = ProgressView.from_json({"processed": 3, "done": True})
    assert finished is not None
    assert finished.fraction == 1.0


def test_bulk_retry_touches_only_dead_or_cancelled(
    store: OperatorStore, conn: psycopg.Connection[Any], seeded: Seeded
) -> None:
    seen: list[int] = []
    result = store.job_retry_matching(JobFilter.build(queue="default"), progress=seen.append)
    assert result.matched == 2  # the hostile dead one and the cancelled one
    assert result.changed == 2
    assert sum(seen) == 2
    assert state_of(conn, seeded.dead_hostile) == "available"
    assert state_of(conn, seeded.cancelled) == "available"
    assert state_of(conn, seeded.dead_http[0]) == "dead"  # other queue
    # A filter for states retry cannot apply to matches nothing.
    assert store.job_retry_matching(JobFilter.build(state="running")).matched == 0


def test_bulk_cancel_cancels_waiting_and_flags_running(
    store: OperatorStore, conn: psycopg.Connection[Any], seeded: Seeded
) -> None:
    result = store.job_cancel_matching(JobFilter.build(task="emails.send"))
    # available x3, scheduled, running (stuck), retryable
    assert result.changed == 6
    assert state_of(conn, seeded.available[0]) == "cancelled"
    assert state_of(conn, seeded.stuck) == "running"  # asked to stop, not yanked
    row = conn.execute(
        "SELECT cancel_requested FROM unbroken.jobs WHERE id = %s", [seeded.stuck]
    ).fetchone()
    assert row == (True,)
    assert state_of(conn, seeded.succeeded[0]) == "succeeded"


def test_bulk_actions_walk_many_batches(conn: psycopg.Connection[Any]) -> None:
    migrations.migrate(conn)
    conn.execute(
        "INSERT INTO unbroken.jobs (task, state, finished_at, attempt, max_attempts)"
        " SELECT 'bulk', 'dead', now(), 1, 1 FROM generate_series(1, 1234)"
    )
    store = OperatorStore(conn)
    batches: list[int] = []
    result = store.job_retry_matching(JobFilter.build(task="bulk"), progress=batches.append)
    assert result.changed == 1234
    assert batches == [500, 500, 234]
    row = conn.execute(
        "SELECT count(*) FROM unbroken.jobs WHERE state = 'available' AND max_attempts = 2"
    ).fetchone()
    assert row == (1234,)


def test_dead_letters_group_by_error_and_act_by_key(
    store: OperatorStore, conn: psycopg.Connection[Any], seeded: Seeded
) -> None:
    groups = store.dead_letter_groups()
    assert [(g.task, g.error_type, g.jobs) for g in groups] == [
        ("sync.issues", "HTTPError", 3),
        ("emails.send", "ValueError", 1),
    ]
    http, hostile = groups
    assert http.message == "502 Bad Gateway"
    assert HOSTILE in hostile.message
    assert set(http.sample_ids) == set(seeded.dead_http)
    assert store.dead_letter_count(DeadLetterFilter(http.key)) == 3
    assert store.dead_letter_count() == 4

    retried = store.dead_letter_retry(DeadLetterFilter(http.key))
    assert retried.changed == 3
    assert {state_of(conn, i) for i in seeded.dead_http} == {"available"}

    # Purge deletes only dead jobs, and only the group asked for.
    assert store.dead_letter_purge(DeadLetterFilter("000000000000")).changed == 0
    purged = store.dead_letter_purge(DeadLetterFilter(hostile.key))
    assert purged.ids == [seeded.dead_hostile]
    assert store.job_get(seeded.dead_hostile) is None
    assert store.dead_letter_groups() == []
    # The guard in SQL: a live job is never deleted, whatever the caller passes.
    assert store.job_delete([seeded.available[0]], ["available"]) == []


def test_purge_older_than(store: OperatorStore, seeded: Seeded) -> None:
    # The hostile one went dead 20 minutes ago, the HTTP ones within 3 minutes.
    assert store.dead_letter_count(DeadLetterFilter(older_than=600)) == 1
    assert store.dead_letter_purge(DeadLetterFilter(older_than=600)).ids == [seeded.dead_hostile]


def test_queues_with_backlog_by_priority_and_pause(store: OperatorStore) -> None:
    queues = {q.name: q for q in store.queue_list()}
    assert set(queues) == {"default", "etl", "reports"}
    default = queues["default"]
    assert (default.available, default.scheduled, default.retryable, default.running) == (
        3,
        1,
        1,
        1,
    )
    assert default.oldest_wait_s is not None
    assert 400 < default.oldest_wait_s < 600
    assert [(p.priority, p.available) for p in default.priorities] == [(10, 1), (0, 2)]
    assert queues["etl"].oldest_wait_s is None  # nothing waits there
    assert queues["reports"].paused
    store.queue_set_paused("etl", True)
    store.queue_set_paused("reports", False)
    queues = {q.name: q for q in store.queue_list()}
    assert queues["etl"].paused
    assert not queues["reports"].paused


def test_stats_rates_failure_rate_and_durations(store: OperatorStore) -> None:
    stats = {s.task: s for s in store.task_stats(3600)}
    emails = stats["emails.send"]
    assert emails.failed == 5 * 15 + 55  # the failure burst, then one a minute
    assert emails.failure_rate == pytest.approx(emails.failed / (emails.succeeded + emails.failed))
    assert emails.per_minute == pytest.approx((emails.succeeded + emails.failed) / 60)
    # Mean, min, max and percentiles all come from the six succeeded rows: 1..6 s each
    # (not the counters' 0.12 s per attempt, which once made the mean fall below p50).
    assert emails.timed == 6
    assert emails.avg_s == pytest.approx(3.5)
    assert (emails.min_s, emails.max_s) == (pytest.approx(1.0), pytest.approx(6.0))
    assert emails.p50_s == pytest.approx(3.5)
    assert emails.p99_s is not None
    assert emails.p99_s > 5.9
    assert stats["sync.issues"].p50_s is None
    assert (stats["sync.issues"].timed, stats["sync.issues"].avg_s) == (0, None)


def test_series_fills_gaps_with_zeros(store: OperatorStore, conn: psycopg.Connection[Any]) -> None:
    series = store.stats_series(3600, 60)
    assert len(series) == 60
    assert [p.at for p in series] == sorted(p.at for p in series)
    assert sum(p.failed for p in series) > 0
    conn.execute("DELETE FROM unbroken.stats_minutely WHERE minute < now() - interval '30 minutes'")
    coarse = store.stats_series(6 * 3600, 900)
    assert 24 <= len(coarse) <= 25
    assert sum(p.succeeded for p in coarse[:-4]) == 0  # empty buckets are there, as zeros


def test_stuck_long_jobs_and_workers(store: OperatorStore, seeded: Seeded) -> None:
    stuck = store.stuck_jobs(longer_than_s=3600)
    assert [(j.id, j.reason) for j in stuck] == [(seeded.stuck, "lease_expired")]
    assert stuck[0].lease_overdue_s is not None
    assert stuck[0].lease_overdue_s > 170
    long_running = store.stuck_jobs(longer_than_s=240)
    assert {(j.id, j.reason) for j in long_running} == {
        (seeded.stuck, "lease_expired"),
        (seeded.running, "long_running"),
    }
    long = {j.id: j for j in store.long_jobs(longer_than_s=3600)}
    assert set(long) == {seeded.running}  # only the one reporting progress
    progress = long[seeded.running].progress
    assert progress is not None
    assert progress.total == 1000
    workers = {w.id: w for w in store.worker_list(silent_after_s=60)}
    assert workers["host-a:1:w1"].job_ids == [seeded.running]
    assert not workers["host-a:1:w1"].silent
    assert workers["host-b:2:w2"].silent


def test_health_reads_the_database(store: OperatorStore) -> None:
    inputs = store.health_inputs()
    assert inputs.available == 4
    assert inputs.expired_leases == 1
    assert inputs.dead_recent == 3
    assert (inputs.workers, inputs.silent_workers) == (2, 1)
    assert inputs.oldest_wait_s is not None
    assert inputs.oldest_wait_s < 600  # the paused queue's 2-hour-old job does not count
    report = health.check(store)
    assert report.status == "degraded"
    assert report.live
    levels = {r.check: r.level for r in report.reasons}
    assert levels["stuck"] == "warn"
    assert levels["workers"] == "warn"
    assert levels["oldest_wait"] == "warn"


def test_health_without_a_schema_is_live_but_not_ready(conn: psycopg.Connection[Any]) -> None:
    store = OperatorStore(conn)
    assert store.schema_version() is None
    report = health.check(store)
    assert report.live
    assert not report.ready
    assert [r.check for r in report.problems()] == ["schema"]


def test_the_store_borrows_from_a_pool(database_url: str, seeded: Seeded) -> None:
    database = Database(database_url, load_settings(database_url=database_url))
    pool = database.pool("ops", min_size=0, max_size=1)
    database.open("ops")
    try:
        store = OperatorStore(pool)
        assert store.job_count(JobFilter.build(state="dead")) == 4
        assert store.job_retry([seeded.dead_hostile]) == [seeded.dead_hostile]
        assert store.job_retry([seeded.dead_hostile]) == []  # no longer dead: nothing to do
        assert "unbroken:ops" in {c.application_name for c in store.connection_list()}
        assert pool.stats().in_use == 0  # every call gave its connection back
    finally:
        database.close()
