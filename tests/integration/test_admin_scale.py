"""Operator reads over many finished jobs cost a page, not the table (EXPLAIN ANALYZE says so).

A few hundred thousand finished jobs (bulk-loaded, then ANALYZEd so the plans are those of a
big table), a working set of waiting and running ones; then every read the CLI, the
dashboard and /metrics make runs once through the operator store while its statements are
recorded, and each is run again under EXPLAIN (ANALYZE, FORMAT JSON). No plan may scan the
jobs table whole, and no statement may read more jobs than a small multiple of what it
returns (the caps are lowered so that "bounded by the cap" and "the whole table" differ).
The timed figures at 5,000,000 jobs are bench/scale.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg import Cursor, sql

from docs_blocks import REPO, blocks
from unbroken import migrations
from unbroken.ops import store as store_module
from unbroken.ops.filters import JobFilter
from unbroken.ops.store import OperatorStore

FINISHED = 200_000
PAGE = 50
# Per statement: the jobs read other than through the partial indexes of waiting and running
# jobs (those hold the 3,000 of the working set, whatever the finished jobs number). A search
# (age, arguments, or a queue or task over finished jobs) reads up to the bound from
# jobs_finished_state_idx in each of the three final states, then fetches at most the bound:
# 4 times the caps, lowered to 1,000, plus slack; 44 times under the table.
ROWS_READ_MAX = 4_500
# Dead letters filtered by queue or task read the dead jobs' index entries (the queue and
# task are INCLUDE columns, no index is keyed by them) until the cap matches: at most every
# dead job's entry (8 % of the finished ones), never the table. The price of one index
# entry per finish instead of three (migrations/0009); bench/scale.py times its worst case.
DEAD_READ_MAX = FINISHED * 8 // 100 + 2_500
READ_MAX = {"dlq ls --queue": DEAD_READ_MAX}
ACTIVE_INDEXES = {"jobs_fetch_idx", "jobs_fetch_keyed_idx", "jobs_due_idx", "jobs_lease_idx"}
LOAD = Path(__file__).parents[2] / "bench" / "scale_load.sql"

Recorded = list[tuple[Any, dict[str, Any]]]


class RecordingCursor(Cursor[Any]):
    """Keeps every statement run through it, with its parameters, in `recorded`."""

    recorded: ClassVar[Recorded] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        RecordingCursor.recorded.append((query, dict(params or {})))
        return super().execute(query, params, **kwargs)


@pytest.fixture(scope="module")
def loaded(pg_server: Any) -> Iterator[str]:
    url = pg_server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        # Flushed commits (the test server commits asynchronously): until its commit is on
        # disk, VACUUM cannot mark a row's page all-visible, so the plans would be those of
        # a table no index-only scan can serve.
        conn.execute("SET synchronous_commit = on")
        migrations.migrate(conn)
        text = "\n".join(
            line for line in LOAD.read_text().splitlines() if not line.startswith("--")
        )
        for statement in filter(str.strip, text.split(";\n")):
            conn.execute(statement.encode(), {"rows": FINISHED})
        conn.execute("VACUUM (ANALYZE) unbroken.jobs")
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture
def lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "COUNT_CAP", 1_000)
    monkeypatch.setattr(store_module, "SAMPLE_PAGES", 50)
    monkeypatch.setattr(store_module, "DEAD_SAMPLE", 1_000)
    monkeypatch.setattr(store_module, "SEARCH_LIMIT", 1_000)


def through_active_index(plan: dict[str, Any]) -> bool:
    """Whether a scan reads jobs through the partial indexes of waiting and running jobs."""
    if plan.get("Index Name") in ACTIVE_INDEXES:
        return True
    bitmaps = [c for c in plan.get("Plans", []) if "Bitmap" in c["Node Type"]]
    return bool(bitmaps) and all(through_active_index(c) for c in bitmaps)


def rows_read(plan: dict[str, Any]) -> int:
    """Finished jobs (at most) the scan nodes on jobs read, returned or filtered out, over
    every loop: what they read through the waiting and running jobs' indexes is left out."""
    total = 0
    if plan.get("Relation Name") == "jobs" and not through_active_index(plan):
        assert plan["Node Type"] != "Seq Scan", "a sequential scan of jobs"
        read = (
            plan.get("Actual Rows", 0)
            + plan.get("Rows Removed by Filter", 0)
            + plan.get("Rows Removed by Index Recheck", 0)
        )
        total += int(read * plan.get("Actual Loops", 1))
    for child in plan.get("Plans", []):
        total += rows_read(child)
    return total


def explained(url: str, query: Any, params: dict[str, Any]) -> dict[str, Any]:
    prefix = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ")
    body = sql.SQL(query.decode()) if isinstance(query, bytes) else query
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(prefix + body, params, prepare=False).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


READS: dict[str, Callable[[OperatorStore], object]] = {
    "jobs ls": lambda s: (s.job_list(JobFilter(), limit=PAGE), s.state_totals()),
    **{
        f"jobs ls --state {state}": lambda s, state=state: s.job_page(
            JobFilter.build(state=state), limit=PAGE
        )
        for state in ("succeeded", "dead", "cancelled", "available", "running", "dead,cancelled")
    },
    "jobs ls --queue": lambda s: s.job_page(JobFilter(queue="queue_3"), limit=PAGE),
    "jobs ls --task": lambda s: (
        s.resolve_task("task_5"),
        s.job_page(JobFilter(task="bench.tasks.task_5"), limit=PAGE),
    ),
    **{
        f"jobs ls --args {args}": lambda s, args=args: s.job_page(JobFilter.build(args=args))
        for args in ('{"user": 4242}', "order number 4242")
    },
    "jobs ls --older-than": lambda s: s.job_page(JobFilter.build(older_than="7d")),
    "jobs ls --older-than --before": lambda s: s.job_page(
        JobFilter.build(older_than="7d"), before_id=FINISHED // 2
    ),
    "jobs ls --state dead --queue": lambda s: s.job_list(
        JobFilter.build(state="dead", queue="queue_3"), limit=PAGE
    ),
    "jobs ls --before": lambda s: s.job_list(JobFilter(), limit=PAGE, before_id=FINISHED // 2),
    "jobs ls --state dead --before": lambda s: s.job_list(
        JobFilter.build(state="dead"), limit=PAGE, before_id=FINISHED // 2
    ),
    "jobs show": lambda s: s.job_get(FINISHED // 2),
    "queues": lambda s: s.queue_list(),
    "dead letters page": lambda s: s.dead_letter_groups(),
    "dlq ls": lambda s: (s.dead_letter_groups(), s.job_count_upto(JobFilter.build(state="dead"))),
    "dlq ls --queue": lambda s: (
        s.dead_letter_groups(queue="queue_3"),
        s.job_count_upto(JobFilter.build(state="dead", queue="queue_3")),
    ),
    "metrics": lambda s: (s.state_counts(), s.queue_list(), s.worker_list()),
    "overview": lambda s: (
        s.stats_series(3600, 60),
        s.worker_list(),
        s.connection_list(),
        s.stuck_jobs(),
        s.health_inputs(),
    ),
    "long jobs": lambda s: s.long_jobs(),
}


@pytest.mark.usefixtures("lowered")
@pytest.mark.parametrize("name", list(READS))
def test_an_operator_read_costs_a_page_not_the_table(loaded: str, name: str) -> None:
    RecordingCursor.recorded = []
    with psycopg.connect(loaded, autocommit=True, cursor_factory=RecordingCursor) as conn:
        READS[name](OperatorStore(conn))
    recorded = [(q, p) for q, p in RecordingCursor.recorded if q != b"SELECT now()"]
    assert recorded, "no statement ran"
    for query, params in recorded:
        plan = explained(loaded, query, params)
        read = rows_read(plan)
        shown = query if isinstance(query, bytes) else query.as_string(None)
        most = READ_MAX.get(name, ROWS_READ_MAX)
        assert read <= most, f"{name}: read {read:,} jobs in\n{shown[:300]!s}"


def test_finished_counts_are_estimated_near_the_truth_and_labelled(loaded: str) -> None:
    with psycopg.connect(loaded, autocommit=True) as conn:
        totals = OperatorStore(conn).state_totals()
        exact = dict(
            conn.execute("SELECT state::text, count(*) FROM unbroken.jobs GROUP BY 1").fetchall()
        )
    assert totals["dead"].kind == "about"
    assert f"{totals['dead']:,}".startswith("~")
    assert abs(totals["dead"] - exact["dead"]) <= 0.15 * exact["dead"]
    assert abs(totals["succeeded"] - exact["succeeded"]) <= 0.10 * exact["succeeded"]
    assert totals["available"] == exact["available"]
    assert totals["available"].kind == "exact"


def scan_indexes(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index) of every scan of the jobs table in the plan."""
    found = []
    if plan.get("Relation Name") == "jobs":
        found.append((str(plan["Node Type"]), plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found += scan_indexes(child)
    return found


def test_the_autoscaling_query_reads_only_waiting_and_running_jobs(loaded: str) -> None:
    """docs/autoscaling.md's query, as written: every scan of jobs is one of the partial
    indexes of waiting and running jobs, and it counts right."""
    [block] = [b for b in blocks(REPO / "docs" / "autoscaling.md") if b.language == "sql"]
    query = block.code
    # The KEDA manifest carries the same query (whitespace aside).
    words = " ".join(line for line in query.splitlines() if not line.startswith("--")).split()
    manifests = [b.code for b in blocks(block.document) if b.language == "yaml"]
    assert any(" ".join(words).rstrip(";") in " ".join(m.split()) for m in manifests)
    plan = explained(loaded, query.encode(), {})
    scans = scan_indexes(plan)
    assert scans, plan
    assert all(index in ACTIVE_INDEXES for _, index in scans), scans
    with psycopg.connect(loaded, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
        exact = conn.execute(
            "SELECT count(*) FROM unbroken.jobs WHERE queue = 'default' AND (state IN"
            " ('available', 'running') OR (state IN ('scheduled', 'retryable')"
            " AND run_at <= now()))"
        ).fetchone()
    assert row is not None
    assert exact is not None
    assert row[0] == exact[0] > 0
