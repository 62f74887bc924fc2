"""Retention: the leader prunes a backlog of finished jobs in one catch-up loop, `unbroken
prune` does it by hand, pruning never waits on a row lock nor holds workers up, and a dead
worker's registration goes away by itself.

Finished rows are seeded by one INSERT ... SELECT generate_series (what a busy week leaves);
every wait polls the database with a deadline that only bounds the test.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psycopg

from apps.harness import FAST_SETTINGS, Probe, running_worker, wait_until, worker_processes
from cli_support import cli, cli_json
from unbroken import App

DAY = 24 * 3600
SEED_FINISHED = """
INSERT INTO unbroken.jobs (task, state, attempt, created_at, finished_at)
SELECT 'seed.old', (ARRAY['succeeded', 'dead', 'cancelled'])[1 + g %% 3]::unbroken.job_state,
       1, now() - make_interval(secs => %(age)s + 60), now() - make_interval(secs => %(age)s + g)
FROM generate_series(1, %(n)s) AS g
"""
# Jobs as old as the finished ones but not finished: pruning must never touch them.
SEED_UNFINISHED = """
INSERT INTO unbroken.jobs (task, state, run_at, attempt, created_at)
SELECT 'seed.waiting', s::unbroken.job_state, now() + interval '30 days', 0,
       now() - interval '30 days'
FROM unnest(ARRAY['scheduled', 'retryable', 'scheduled']) AS s
"""
OLD = "SELECT count(*) FROM unbroken.jobs WHERE finished_at < now() - interval '1 day'"


def seed(probe: Probe, n: int, age_s: float = 2 * DAY) -> None:
    probe.rows(SEED_FINISHED, {"n": n, "age": age_s})


def count(probe: Probe, query: str = OLD) -> int:
    return int(probe.value(query))


def test_the_leader_catches_up_a_backlog_in_one_loop_not_a_batch_a_minute(
    app: App, probe: Probe
) -> None:
    seed(probe, 50_000)
    seed(probe, 30, age_s=120)  # finished two minutes ago: within a day's retention
    probe.rows(SEED_UNFINISHED)
    with running_worker(app, retention_seconds=DAY):
        wait_until(lambda: count(probe) == 0, timeout=60, what="the backlog to be pruned")
    assert count(probe, "SELECT count(*) FROM unbroken.jobs WHERE finished_at IS NOT NULL") == 30
    assert count(probe, "SELECT count(*) FROM unbroken.jobs WHERE finished_at IS NULL") == 3


def test_prune_command_dry_run_counts_then_deletes(database_url: str, probe: Probe) -> None:
    assert cli(database_url, "db", "migrate").returncode == 0
    seed(probe, 300)  # 100 each of succeeded, dead, cancelled, two days old
    seed(probe, 6, age_s=3600)  # an hour old
    probe.rows(SEED_UNFINISHED)

    dry = cli_json(database_url, "prune", "--older-than", "1d", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["matching"] == {"succeeded": 100, "dead": 100, "cancelled": 100}
    assert (dry["deleted"], dry["older_than_s"]) == (0, DAY)
    assert count(probe) == 300  # a dry run deletes nothing

    text = cli(database_url, "prune", "--older-than", "1d", "--dry-run")
    assert text.returncode == 0
    assert "300 finished job(s) older than 1d would be pruned" in text.stdout

    dead = cli_json(database_url, "prune", "--older-than", "1d", "--state", "dead", "--yes")
    assert (dead["deleted"], dead["by_state"]) == (100, {"dead": 100})
    assert count(probe, OLD + " AND state = 'dead'") == 0

    rest = cli_json(database_url, "prune", "--older-than", "1d", "--batch", "7", "--yes")
    assert rest["deleted"] == 200
    assert rest["batches"] >= 200 // 7
    assert count(probe) == 0
    # Retention's default (7 days) keeps the hour-old ones; unfinished jobs are never pruned.
    assert cli_json(database_url, "prune", "--yes")["deleted"] == 0
    assert cli_json(database_url, "prune", "--older-than", "30m", "--yes")["deleted"] == 6
    assert count(probe, "SELECT count(*) FROM unbroken.jobs") == 3


def test_prune_command_refuses_bad_input_in_one_line(database_url: str, probe: Probe) -> None:
    assert cli(database_url, "db", "migrate").returncode == 0
    seed(probe, 3)
    for args, says in [
        (("--older-than", "soon"), "'soon' is not a duration"),
        (("--state", "running"), "--state running: only finished jobs are pruned"),
        (("--state", "nope"), "unknown job state 'nope'"),
        (("--batch", "0"), "--batch must be between 1 and 50000"),
    ]:
        result = cli(database_url, "prune", "--yes", *args)
        lines = result.stderr.strip().splitlines()
        assert (result.returncode, len(lines)) == (2, 1), result.stderr
        assert says in lines[0]
    refused = cli(database_url, "prune", "--older-than", "1d")  # nobody to confirm
    assert refused.returncode != 0
    assert count(probe) == 3


def test_pruning_never_waits_on_a_lock_and_never_holds_up_workers(
    app: App, probe: Probe, database_url: str
) -> None:
    @app.task(name="quick")
    async def quick(i: int) -> int:
        return i

    seed(probe, 20_000)
    probe.rows(SEED_UNFINISHED)
    with psycopg.connect(database_url) as holder:
        # Another transaction holds 500 old finished rows (an operator's retry of dead jobs,
        # a second pruner's batch): the leader's pruning must skip them, not wait for them.
        held = holder.execute(
            "SELECT id FROM unbroken.jobs WHERE finished_at IS NOT NULL ORDER BY id LIMIT 500"
            " FOR UPDATE"
        ).fetchall()
        assert len(held) == 500
        with running_worker(app, retention_seconds=DAY):
            ids = app.enqueue_many([quick.job(i) for i in range(2_000)])
            wait_until(lambda: count(probe) == 500, timeout=60, what="all but the held pruned")
            done = "SELECT count(*) FROM unbroken.jobs WHERE task = 'quick' AND state = 'succeeded'"
            wait_until(lambda: count(probe, done) == 2_000, timeout=60, what="every job to run")
            waits = probe.rows(
                "SELECT pid, wait_event_type, wait_event, query FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            assert waits == []  # nobody waits on a lock: not the pruner, not a worker
        holder.rollback()
    assert len(ids) == 2_000
    assert count(probe, "SELECT count(*) FROM unbroken.jobs WHERE task = 'quick'") == 2_000
    assert count(probe, "SELECT count(*) FROM unbroken.jobs WHERE finished_at IS NULL") == 3


def test_autovacuum_settings_are_set_on_the_jobs_table(app: App, probe: Probe) -> None:
    options = probe.value("SELECT reloptions FROM pg_class WHERE oid = 'unbroken.jobs'::regclass")
    found = dict(option.split("=", 1) for option in options or [])
    assert float(found["autovacuum_vacuum_scale_factor"]) <= 0.02
    assert float(found["autovacuum_vacuum_insert_scale_factor"]) <= 0.02
    assert float(found["autovacuum_analyze_scale_factor"]) <= 0.05
    assert int(found["autovacuum_vacuum_cost_limit"]) >= 1000
    docs = (Path(__file__).parents[2] / "docs" / "retention.md").read_text()
    for name in found:
        assert name in docs


def test_a_killed_workers_registration_goes_and_health_is_healthy_again(
    app: App, probe: Probe, database_url: str, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {k: v for k, v in FAST_SETTINGS.items() if k != "max_payload_bytes"}
    with worker_processes(database_url, tmp_path, **settings) as start:
        first, second = start("first"), start("second")
        first.wait_registered(probe)
        second.wait_registered(probe)
        leader = wait_until(
            lambda: probe.value("SELECT holder FROM unbroken.leaders"), timeout=30, what="a leader"
        )
        victim = first if leader == first.worker_id else second
        victim.signal(signal.SIGKILL)
        victim.wait_exit(10)

        def gone() -> bool:
            row = "SELECT count(*) FROM unbroken.workers WHERE id = %s"
            return probe.value(row, [victim.worker_id]) == 0

        # A lease (3 s) and a rescue interval (1 s) after its last heartbeat; the bound is
        # well below health's 60 s "silent" mark, and far below the old 300 s.
        wait_until(gone, timeout=20, what="the killed worker's registration to go")
        report = json.loads(cli(database_url, "health", "--json").stdout)
        workers = next(r for r in report["reasons"] if r["check"] == "workers")
        assert (report["status"], workers["message"]) == ("healthy", "1 worker(s) beating")
