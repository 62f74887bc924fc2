"""`unbroken jobs` as a user runs it: a subprocess, `--json` parsed, exit codes read."""

from __future__ import annotations

import json
import os
import subprocess

import psycopg

from cli_support import UNBROKEN, cli, cli_json
from ops_seed import Seeded, state_of


def test_jobs_ls_filters(database_url: str, seeded: Seeded) -> None:
    listed = cli_json(database_url, "jobs", "ls", "--state", "dead")
    assert {j["id"] for j in listed["jobs"]} == {*seeded.dead_http, seeded.dead_hostile}
    assert listed["filter"] == "state=dead"
    by_args = cli_json(database_url, "jobs", "ls", "--args", '{"project": "ALPHA"}')
    assert [j["id"] for j in by_args["jobs"]] == [seeded.running]
    old = cli_json(database_url, "jobs", "ls", "--older-than", "5m", "--queue", "default")
    assert {j["id"] for j in old["jobs"]} == set(seeded.available)
    table = cli(database_url, "jobs", "ls", "--task", "sync.issues")
    assert table.returncode == 0
    assert "502 Bad Gateway" in table.stdout
    bad = cli(database_url, "jobs", "ls", "--state", "zombie")
    assert bad.returncode == 2
    assert "unknown job state 'zombie'" in bad.stderr


def test_jobs_show(database_url: str, seeded: Seeded) -> None:
    job = cli_json(database_url, "jobs", "show", str(seeded.dead_http[0]))
    assert job["state"] == "dead"
    assert [e["attempt"] for e in job["errors"]] == [1, 2, 3]
    assert job["errors"][0]["traceback"].startswith("Traceback")
    text = cli(database_url, "jobs", "show", str(seeded.running))
    assert "42.3%" in text.stdout
    assert "120.5 rows/s" in text.stdout
    missing = cli(database_url, "jobs", "show", "999999")
    assert missing.returncode == 1
    assert "no job 999999" in missing.stderr


def test_bulk_retry_asks_or_takes_yes(database_url: str, seeded: Seeded) -> None:
    refused = cli(database_url, "jobs", "retry", "--queue", "etl")
    assert refused.returncode == 2  # no terminal to confirm on: refused, nothing done
    assert "pass --yes" in refused.stderr
    assert state_of(database_url, seeded.dead_http[0]) == "dead"
    done = cli_json(database_url, "jobs", "retry", "--queue", "etl", "--yes")
    assert done == {"matched": 3, "changed": 3, "ids": sorted(seeded.dead_http)}
    assert state_of(database_url, seeded.dead_http[0]) == "available"


def test_retry_and_cancel_by_id(database_url: str, seeded: Seeded) -> None:
    retried = cli_json(database_url, "jobs", "retry", str(seeded.cancelled), str(seeded.running))
    assert retried == {"matched": 2, "changed": 1, "ids": [seeded.cancelled]}
    cancelled = cli_json(database_url, "jobs", "cancel", str(seeded.scheduled))
    assert cancelled["ids"] == [seeded.scheduled]
    assert state_of(database_url, seeded.scheduled) == "cancelled"
    both = cli(database_url, "jobs", "cancel", "1", "--queue", "x")
    assert both.returncode == 2


def test_watch_follows_a_job_until_it_finishes(database_url: str, seeded: Seeded) -> None:
    done = cli(database_url, "jobs", "watch", str(seeded.succeeded[0]), "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout.splitlines()[-1])["state"] == "succeeded"
    # A running job: finish it while the watcher polls; it exits when the job does.
    watcher = subprocess.Popen(
        [
            UNBROKEN,
            "jobs",
            "watch",
            str(seeded.running),
            "--json",
            "--interval",
            "0.2",
            "--timeout",
            "30",
        ],
        env={**os.environ, "UNBROKEN_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    first = json.loads(watcher.stdout.readline())
    assert first["state"] == "running"
    assert first["progress"]["processed"] == 420
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE unbroken.jobs SET state = 'succeeded', finished_at = now(), worker_id = NULL,"
            " lease_expires_at = NULL, progress = progress || '{\"processed\": 1000}'"
            " WHERE id = %s",
            [seeded.running],
        )
    out, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    last = json.loads(out.splitlines()[-1])
    assert last["state"] == "succeeded"
    assert last["progress"]["processed"] == 1000
    dead = cli(database_url, "jobs", "watch", str(seeded.dead_hostile))
    assert dead.returncode == 1


def test_task_filter_takes_the_short_name(database_url: str, seeded: Seeded) -> None:
    # As `unbroken enqueue` does: `issues` names `sync.issues` when no task is called `issues`.
    short = cli_json(database_url, "jobs", "ls", "--task", "issues", "--state", "dead")
    assert {j["id"] for j in short["jobs"]} == set(seeded.dead_http)
    assert short["filter"] == "state=dead task=sync.issues"
    retried = cli_json(database_url, "jobs", "retry", "--task", "issues", "--yes")
    assert retried["ids"] == sorted(seeded.dead_http)
    # Two tasks end in `.send`: the short name is refused with both names, nothing is done.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO unbroken.jobs (queue, task, args) VALUES ('x', 'sms.send', '[]')")
    for command in (("jobs", "ls"), ("jobs", "cancel", "--yes"), ("dlq", "ls")):
        ambiguous = cli(database_url, *command, "--task", "send")
        assert ambiguous.returncode == 2, command
        assert "emails.send, sms.send" in ambiguous.stderr
    assert state_of(database_url, seeded.scheduled) == "scheduled"
    # A full name is taken as it is, even when it is also the end of another task's name.
    full = cli_json(database_url, "jobs", "ls", "--task", "sms.send")
    assert [j["task"] for j in full["jobs"]] == ["sms.send"]


def test_filtered_list_counts_what_matches(database_url: str, seeded: Seeded) -> None:
    every = cli_json(database_url, "jobs", "ls", "--task", "emails.send")
    matching = len(every["jobs"])
    assert every["matching"] == matching > 2
    page = cli_json(database_url, "jobs", "ls", "--task", "emails.send", "--limit", "2")
    assert (len(page["jobs"]), page["matching"]) == (2, matching)
    table = cli(database_url, "jobs", "ls", "--task", "emails.send", "--limit", "2")
    # The first line counts the filter's jobs, not the whole table's by state.
    assert table.stdout.splitlines()[0] == f"showing 2 of {matching} matching task=emails.send"


def test_a_search_by_arguments_reads_the_newest_10000_and_says_where_to_go_on(
    database_url: str, seeded: Seeded
) -> None:
    # No index answers a filter by arguments or age: a list reads at most the newest 10,000
    # jobs its other filters match, and says where the search stopped.
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO unbroken.jobs (task, args, state, finished_at)"
            " VALUES ('bulk.task', '{\"needle\": true}', 'succeeded', now()) RETURNING id"
        ).fetchone()
        assert row is not None
        needle = row[0]
        conn.execute(
            "INSERT INTO unbroken.jobs (task, args, state, finished_at)"
            " SELECT 'bulk.task', jsonb_build_object('n', i), 'succeeded', now()"
            " FROM generate_series(1, 10050) AS i"
        )
    first = cli_json(database_url, "jobs", "ls", "--args", '{"needle": true}')
    assert first["jobs"] == []
    assert first["searched"]["jobs"] == 10_000
    stopped_at = first["searched"]["stopped_at"]
    assert needle < stopped_at
    text = cli(database_url, "jobs", "ls", "--args", "needle")
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1] == (
        f"searched the newest 10,000 jobs; more: --before {stopped_at}"
    )
    assert "of 0+ matching" in text.stdout  # at least none: the rest was not searched
    on = cli_json(
        database_url, "jobs", "ls", "--args", '{"needle": true}', "--before", str(stopped_at)
    )
    assert [j["id"] for j in on["jobs"]] == [needle]
    assert on["matching"] == 1
    assert on["searched"]["stopped_at"] is None  # it reached the oldest job
    assert on["searched"]["jobs"] < 10_000
    unsearched = cli_json(database_url, "jobs", "ls", "--state", "succeeded", "--limit", "1")
    assert unsearched["searched"] is None  # the index answers a state whole
    assert unsearched["matching"] == 10_000  # counted up to 10,000 ("10,000+" in the table)
    # No index is keyed by a finished job's task or queue (one index entry per finish, not
    # three: migrations/0009): a filter by them is searched for like one by arguments.
    by_task = cli_json(database_url, "jobs", "ls", "--task", "bulk.task", "--limit", "1")
    assert len(by_task["jobs"]) == 1
    assert by_task["searched"] == {"jobs": 10_000, "stopped_at": stopped_at}
    waiting = cli_json(database_url, "jobs", "ls", "--state", "available", "--task", "bulk.task")
    assert waiting["searched"] is None  # waiting jobs' own indexes answer it whole
