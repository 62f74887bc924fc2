"""Chunked jobs in real worker processes under real faults (issue 4).

Workers are subprocesses (`python -m unbroken worker --app tests.apps.chunk_app:app`) with
a 3 s lease, a 1 s heartbeat and a 1 s rescue interval. The job copies a slow paged
source into `chunk_sink` (unique id, a `writes` counter bumped by any second write), and a
trigger logs every checkpoint the job commits (`checkpoint_log`). Each test checks: sink
rows == source rows, no record written twice, committed checkpoints never go backwards,
the job ends succeeded. Every wait polls the database, a log or a process with a deadline.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apps.chunk_app import SETUP_SQL, TASK, TASK_SYNC
from apps.harness import Probe, WorkerProcess, insert_jobs, wait_until, worker_processes
from pg import Faults, durable_commits
from unbroken import migrations

REPO = Path(__file__).resolve().parents[2]
APP_REF = "tests.apps.chunk_app:app"
LEASE = 3.0
WORKER_SETTINGS = {
    "lease_seconds": LEASE,
    "heartbeat_interval": 1,
    "rescue_interval": 1,
    "promote_interval": 0.2,  # a rescued job is due at once: make it available soon
    "poll_interval": 0.5,
}
# A rescue waits for the lease to run out (3 s), for the leader's term when the leader
# was the worker that died (3 s), then for a rescue sweep and a fetch; plus a loaded box.
TAKEOVER = 25.0
FINAL = ("succeeded", "dead", "cancelled")


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def probe(database_url: str) -> Iterator[Probe]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute(SETUP_SQL.encode())
    probe = Probe(database_url)
    yield probe
    probe.close()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Starts worker processes of chunk_app; every one is killed at the end, whatever happened."""
    with worker_processes(database_url, tmp_path, APP_REF, **WORKER_SETTINGS) as start:
        yield start


# --- what every test checks ---------------------------------------------------------------------
def sink_counts(probe: Probe) -> dict[str, Any]:
    return probe.rows(
        "SELECT count(*) AS rows, count(DISTINCT id) AS ids, min(id) AS first,"
        " max(id) AS last, max(writes) AS max_writes, sum(writes) AS writes,"
        " count(*) FILTER (WHERE payload <> 'record-' || id) AS wrong FROM chunk_sink"
    )[0]


def assert_exactly_once(probe: Probe, items: int) -> dict[str, Any]:
    """Every source record is in the sink, once, with its content; returns the counts."""
    sink = sink_counts(probe)
    expected = {"rows": items, "ids": items, "first": 1, "last": items}
    assert sink == {**expected, "max_writes": 1, "writes": items, "wrong": 0}, sink
    return sink


def checkpoints(probe: Probe, job_id: int) -> list[dict[str, Any]]:
    """Every checkpoint the job committed, in commit order."""
    return probe.rows("SELECT * FROM checkpoint_log WHERE job_id = %s ORDER BY n", [job_id])


def assert_never_backwards(log: list[dict[str, Any]], items: int) -> None:
    assert log, "no checkpoint was committed"
    seqs = [c["seq"] for c in log]
    positions = [c["position"] for c in log]
    attempts = [c["attempt"] for c in log]
    assert seqs == list(range(1, len(log) + 1)), f"commits lost or repeated: {seqs}"
    assert positions == sorted(positions), f"a checkpoint went backwards: {positions}"
    assert attempts == sorted(attempts), f"an older attempt committed after a newer: {attempts}"
    assert (log[-1]["position"], log[-1]["done"]) == (items, True)
    # The checkpoint is the cursor of the page to read next (skipping page_skip items of it)
    cursors = [c["checkpoint"] for c in log]
    assert cursors == sorted(cursors), f"a cursor went backwards: {cursors}"


def job_of(probe: Probe, job_id: int) -> dict[str, Any]:
    rows = probe.rows(
        "SELECT id, state::text AS state, attempt, rescues, worker_id, errors, result,"
        " checkpoint, progress, finished_at FROM unbroken.jobs WHERE id = %s",
        [job_id],
    )
    assert rows, f"job {job_id} does not exist"
    return rows[0]


def wait_succeeded(probe: Probe, job_id: int, timeout: float) -> dict[str, Any]:
    row = wait_until(
        lambda: (job := job_of(probe, job_id))["state"] in FINAL and job,
        timeout=timeout,
        what=f"job {job_id} to finish",
    )
    assert row["state"] == "succeeded", row
    return row  # type: ignore[no-any-return]


def position_of(job: dict[str, Any]) -> int:
    """Items consumed as of the job's last committed checkpoint."""
    return int((job["progress"] or {}).get("position", 0))


def seq_of(job: dict[str, Any]) -> int:
    """How many chunk commits the job has (its fencing counter)."""
    return int((job["progress"] or {}).get("seq", 0))


# --- the tests ------------------------------------------------------------------------------------
def test_worker_killed_mid_job_second_worker_resumes_from_the_checkpoint(
    probe: Probe, workers: StartWorker
) -> None:
    items, page_size = 6000, 30
    a, b = workers("a"), workers("b")
    a.wait_registered(probe)
    b.wait_registered(probe)
    args = {"items": items, "page_size": page_size, "latency_ms": 8, "chunk_size": 250}
    [job] = insert_jobs(probe, TASK, kwargs=args)

    row = wait_until(
        lambda: position_of(now := job_of(probe, job)) >= items // 3 and now,
        timeout=30,
        what="a third of the job committed",
    )
    at = position_of(row)
    assert (row["state"], row["attempt"]) == ("running", 1), "the job ended too soon"
    [victim] = [w for w in (a, b) if w.worker_id == row["worker_id"]]
    survivor = b if victim is a else a
    victim.signal(signal.SIGKILL)
    victim.proc.wait(10)

    final = wait_succeeded(probe, job, timeout=TAKEOVER + 30)
    log = checkpoints(probe, job)
    resumed = [c for c in log if c["attempt"] == 1][-1]
    print(
        f"killed {victim.name} at position {at}; attempt 2 resumed at cursor "
        f"{resumed['checkpoint']} (+{resumed['page_skip']} done) and read "
        f"{final['result']['pages_read']} of {math.ceil(items / page_size)} pages"
    )
    assert (final["attempt"], final["rescues"]) == (2, 1), final
    assert final["errors"][0]["type"] == "LeaseExpired"
    result = final["result"]
    assert (result["worker"], result["attempt"]) == (survivor.worker_id, 2)

    first = [c for c in log if c["attempt"] == 1]
    second = [c for c in log if c["attempt"] == 2]
    assert first
    assert second
    assert {c["worker_id"] for c in first} == {victim.worker_id}
    assert {c["worker_id"] for c in second} == {survivor.worker_id}
    assert resumed == first[-1]  # attempt 2 starts where attempt 1's last commit left off
    assert result["opened_at"] == [resumed["checkpoint"]], (result, resumed)
    assert resumed["checkpoint"] > 0
    total_pages = math.ceil(items / page_size)
    assert result["pages_read"] == total_pages - resumed["checkpoint"] // page_size
    assert result["pages_read"] < total_pages  # not read again from zero
    by_attempt = {
        r["written_by"]: r["n"]
        for r in probe.rows("SELECT written_by, count(*) AS n FROM chunk_sink GROUP BY 1")
    }
    assert by_attempt == {1: resumed["position"], 2: items - resumed["position"]}

    assert_exactly_once(probe, items)
    assert_never_backwards(log, items)
    assert survivor.stop() == 0


@pytest.mark.parametrize(
    ("task", "kill_at"),
    [(TASK, "source-end"), (TASK_SYNC, "source-end"), (TASK, "after-run")],
    ids=["async-source-end", "sync-source-end", "async-after-run"],
)
def test_killed_after_a_last_page_without_cursor_the_retry_writes_nothing_twice(
    probe: Probe, workers: StartWorker, task: str, kill_at: str
) -> None:
    """Issue 11: the last page's cursor is None and a chunk ends exactly with it (1000
    items, pages of 50, chunks of 250). The worker is SIGKILLed once everything is written
    but before the job finished: while it reads past the last page (source-end), or after
    the runner returned (after-run). The rescued attempt must write nothing again: None is
    not "start from the beginning" there, and the position never exceeds the total."""
    items, page_size, chunk_size = 1000, 50, 250
    a, b = workers("a"), workers("b")
    a.wait_registered(probe)
    b.wait_registered(probe)
    args: dict[str, Any] = {
        "items": items,
        "page_size": page_size,
        "latency_ms": 2,
        "chunk_size": chunk_size,
        "end_cursor_none": True,
    }
    if kill_at == "source-end":
        args |= {"stall_at": items, "stall_seconds": 60}  # attempt 1 stalls past the end
        word = "stalls"
    else:
        args |= {"linger_seconds": 60}  # attempt 1 lingers after its run returned
        word = "lingers"
    [job] = insert_jobs(probe, task, kwargs=args)

    victim = wait_until(
        lambda: next((w for w in (a, b) if word in w.log_flat()), None),
        timeout=30,
        what=f"attempt 1 to reach its kill point ({kill_at})",
    )
    row = job_of(probe, job)
    assert (row["state"], row["attempt"]) == ("running", 1), row
    if kill_at == "after-run":
        assert (row["progress"]["position"], row["progress"]["done"]) == (items, True), row
    survivor = b if victim is a else a
    victim.signal(signal.SIGKILL)
    victim.proc.wait(10)

    try:
        final = wait_succeeded(probe, job, timeout=TAKEOVER + 30)
    except AssertionError:  # what the survivor did instead, for whoever reads the failure
        print(f"job: {job_of(probe, job)}\nsurvivor's log: {survivor.log()[-6000:]}")
        raise
    log = checkpoints(probe, job)
    print(f"killed {victim.name} at {kill_at}; result {final['result']}; log {log[-3:]}")
    assert (final["attempt"], final["rescues"]) == (2, 1), final
    assert final["result"]["worker"] == survivor.worker_id
    assert_exactly_once(probe, items)
    progress = final["progress"]
    assert (progress["position"], progress["total"], progress["done"]) == (items, items, True)
    positions = [c["position"] for c in log]
    assert positions == sorted(positions), f"a checkpoint went backwards: {positions}"
    assert max(positions) == items, positions
    assert [c["seq"] for c in log] == list(range(1, len(log) + 1))
    if kill_at == "after-run":  # finished: attempt 2 neither reads nor writes
        assert (final["result"]["opened_at"], final["result"]["pages_read"]) == ([], 0)
        assert [c for c in log if c["attempt"] == 2] == []
    assert survivor.stop() == 0


@contextlib.contextmanager
def heartbeat_held(url: str, worker_id: str) -> Iterator[None]:
    """Keep the worker's row in unbroken.workers locked: its heartbeat (one statement that
    also updates that row) waits, so it cannot tell a job that its lease is gone, as when
    the heartbeat is slow or its connection half-open. Only the chunk's own fence is left."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        # The leader forgets a worker silent for a lease (this one was stopped longer), and
        # its next heartbeat registers it again: hold the row whether or not it is there.
        locked = conn.execute(
            "INSERT INTO unbroken.workers (id, host, pid, queues, concurrency)"
            " VALUES (%s, 'held', 0, '{}', 1)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = unbroken.workers.heartbeat_at"
            " RETURNING id",
            [worker_id],
        ).fetchone()
        assert locked is not None
        yield
        conn.rollback()


@pytest.mark.parametrize(
    ("task", "heartbeat"),
    [(TASK, "held"), (TASK_SYNC, "held"), (TASK, "free")],
    ids=["async-commit-fenced", "sync-commit-fenced", "async-heartbeat-free"],
)
def test_stale_worker_resumed_after_a_takeover_commits_nothing(
    probe: Probe, workers: StartWorker, database_url: str, task: str, heartbeat: str
) -> None:
    """SIGSTOP the job's worker past its lease; another finishes the job; SIGCONT it.

    held: its heartbeat cannot answer, so the stale job goes on to commit its chunk (the
    slow page completes one) and the commit's fence rolls it back (LeaseLost). free:
    whichever comes first stops it, the fence or the heartbeat finding the lease gone.
    """
    # The slow page is the last of chunk 8 (1400..1599): resumed, the chunk is complete.
    items, page_size, stall_at = 4000, 40, 1560
    a, b = workers("a"), workers("b")
    a.wait_registered(probe)
    b.wait_registered(probe)
    args = {
        "items": items,
        "page_size": page_size,
        "latency_ms": 5,
        "chunk_size": 200,
        "stall_at": stall_at,  # attempt 1 pauses on a slow page there (no transaction open)
        "stall_seconds": 4,
    }
    [job] = insert_jobs(probe, task, kwargs=args)

    stale = wait_until(
        lambda: next((w for w in (a, b) if "stalls" in w.log_flat()), None),
        timeout=30,
        what="attempt 1 to reach its slow page",
    )
    stale.signal(signal.SIGSTOP)
    other = b if stale is a else a
    in_tx = probe.value(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'unbroken:chunks' AND state LIKE 'idle in transaction%'"
    )
    assert in_tx == 0, "a transaction is open while the source is read"
    stopped_at = position_of(job_of(probe, job))
    assert 0 < stopped_at <= stall_at

    final = wait_succeeded(probe, job, timeout=TAKEOVER + 30)
    assert (final["attempt"], final["rescues"]) == (2, 1), final
    assert final["result"]["worker"] == other.worker_id
    sink = assert_exactly_once(probe, items)
    log = checkpoints(probe, job)

    hold = heartbeat_held(database_url, stale.worker_id)
    with hold if heartbeat == "held" else contextlib.nullcontext():
        stale.signal(signal.SIGCONT)

        def stale_outcome() -> str | None:
            flat = stale.log_flat()
            if "stopped: lease lost" in flat or "lease lost (rescued elsewhere)" in flat:
                return "stopped"
            if checkpoints(probe, job) != log or sink_counts(probe) != sink:
                return "committed"
            return None

        outcome = wait_until(
            stale_outcome, timeout=LEASE + 15, what=f"{stale.name} to find it lost the job"
        )
        assert outcome == "stopped", f"{stale.name} committed after the takeover"
        if heartbeat == "held":
            waiting = probe.value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'unbroken:worker' AND wait_event_type = 'Lock'"
            )
            assert waiting >= 1, "the stale worker's heartbeat was not held up"
    assert stale.stop() == 0  # nothing of it is left running that could still commit
    flat = stale.log_flat()
    fenced = "write.fenced" in flat
    print(
        f"{stale.name} stopped at position {stopped_at}; after SIGCONT it was stopped by "
        f"{'its fenced chunk commit' if fenced else 'its heartbeat (lease not renewed)'}"
    )
    if heartbeat == "held":
        assert "chunk_app: write.fenced" in flat, flat[-3000:]  # the commit's fence: rolled back
        assert f"job {job} attempt 1 stopped: lease lost" in flat, flat[-3000:]  # LeaseLost

    assert job_of(probe, job) == final  # the row is still the new owner's final state
    assert assert_exactly_once(probe, items) == sink
    assert checkpoints(probe, job) == log  # the stale worker committed no checkpoint
    assert {c["worker_id"] for c in log if c["attempt"] == 1} == {stale.worker_id}
    assert {c["worker_id"] for c in log if c["attempt"] == 2} == {other.worker_id}
    assert_never_backwards(log, items)
    assert other.stop() == 0


def test_restarts_and_terminated_backends_mid_chunk_cost_no_attempt(
    probe: Probe, workers: StartWorker, faults: Faults
) -> None:
    durable_commits(probe.url)  # chunk commits still skip the flush, by design
    items = 6000
    w = workers("w")
    w.wait_registered(probe)
    # write_delay keeps each chunk's transaction open 80 ms: the faults land mid-chunk, and
    # each costs that chunk one failed try (a retry on a fresh connection).
    args = {
        "items": items,
        "page_size": 30,
        "latency_ms": 5,
        "chunk_size": 200,
        "write_delay": 0.08,
    }
    [job] = insert_jobs(probe, TASK, kwargs=args)

    def chunk_in_flight() -> bool:
        return bool(
            probe.value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'unbroken:chunks' AND xact_start IS NOT NULL"
            )
        )

    def next_chunk_in_flight(after_seq: int) -> bool:
        """A chunk committed since `after_seq` (the job moved on) and the next is open."""
        row = job_of(probe, job)
        assert row["state"] not in FINAL, f"the job is {row['state']} before the faults ended"
        return seq_of(row) > after_seq and chunk_in_flight()

    hits: list[tuple[str, int]] = []
    for fault in ("terminate", "restart-fast", "terminate", "restart-immediate"):
        seq = seq_of(job_of(probe, job))
        wait_until(
            lambda seq=seq: next_chunk_in_flight(seq),
            timeout=30,
            what=f"a chunk in flight before {fault}",
            interval=0.005,
        )
        if fault == "terminate":
            assert faults.terminate_backends("unbroken:chunks") >= 1
        else:
            faults.restart("fast" if fault == "restart-fast" else "immediate")
        hits.append((fault, position_of(job_of(probe, job))))

    final = wait_succeeded(probe, job, timeout=60)
    retries = len(re.findall(r"chunk \d+ failed \(try \d+/\d+\), retrying", w.log_flat()))
    print(f"faults at {hits}; chunk retries logged: {retries}")
    assert (final["attempt"], final["rescues"], final["errors"]) == (1, 0, []), final
    assert final["result"]["opened_at"][0] == 0  # one attempt, read from the start
    assert retries >= len(hits), "a fault missed the chunk in flight (no chunk retried)"
    assert_exactly_once(probe, items)
    assert_never_backwards(checkpoints(probe, job), items)
    assert faults.idle_in_transaction() == []
    assert w.stop() == 0


def test_demo_with_chaos_writes_every_record_exactly_once(tmp_path: Path) -> None:
    """`unbroken demo --chaos` end to end, on its own embedded server in a fresh data dir."""
    data_dir = tmp_path / "pgdata"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UNBROKEN_", "PG")) and k != "DATABASE_URL"
    }
    env.update(
        {
            "UNBROKEN_DATA_DIR": str(data_dir),
            "TMPDIR": str(tmp_path),  # anything temporary stays in the test's folder
            "PYTHONPATH": str(REPO / "src"),
            "COLUMNS": "200",
        }
    )
    out_path = tmp_path / "demo.out"
    unbroken_cli = [sys.executable, "-m", "unbroken"]
    started = time.monotonic()
    try:
        with out_path.open("wb") as out:
            # Its own session: the demo's worker processes share its process group.
            demo = subprocess.Popen(
                [*unbroken_cli, "demo", "--chaos", "--timeout", "150"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = demo.wait(timeout=180)
            finally:
                if demo.poll() is None:
                    # The group is the demo's and its workers' (not the server's: that runs
                    # in a session of its own); it cannot be recycled while the demo is
                    # unreaped.
                    os.killpg(demo.pid, signal.SIGKILL)
                    demo.wait(30)
        took = time.monotonic() - started
        output = re.sub(r"\s+", " ", out_path.read_text(errors="replace"))
        print(f"demo --chaos took {took:.1f} s: {output[-600:]}")
        assert code == 0, output[-4000:]
        assert "every record written exactly once" in output
        assert "chaos: restart-fast, kill-worker, restart-immediate" in output
    finally:
        stop = subprocess.run(
            [*unbroken_cli, "db", "stop"],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if stop.returncode == 0:  # else the server may still run on it: keep it
            shutil.rmtree(data_dir, ignore_errors=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
