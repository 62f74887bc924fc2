"""`unbroken dlq` as a user runs it: groups listed, one retried by key, the rest purged."""

from __future__ import annotations

from cli_support import cli, cli_json
from ops_seed import Seeded, state_of


def test_dead_letters(database_url: str, seeded: Seeded) -> None:
    listed = cli_json(database_url, "dlq", "ls")
    assert listed["jobs"] == 4
    http = next(g for g in listed["groups"] if g["error_type"] == "HTTPError")
    assert http["jobs"] == 3
    assert cli(database_url, "dlq", "retry").returncode == 2  # which group? say it
    retried = cli_json(database_url, "dlq", "retry", http["key"], "--yes")
    assert retried["changed"] == 3
    purged = cli_json(database_url, "dlq", "purge", "--all", "--yes")
    assert purged["ids"] == [seeded.dead_hostile]
    assert state_of(database_url, seeded.dead_hostile) is None
    assert cli_json(database_url, "dlq", "ls") == {"groups": [], "jobs": 0, "matching": 0}


def test_filtered_dead_letters_count_what_matches(database_url: str, seeded: Seeded) -> None:
    one = cli_json(database_url, "dlq", "ls", "--limit", "1")
    assert (len(one["groups"]), one["matching"]) == (1, 4)
    table = cli(database_url, "dlq", "ls", "--limit", "1")
    assert "showing 3 of 4 dead job(s) (the largest group; --limit for more)" in table.stdout
    etl = cli(database_url, "dlq", "ls", "--queue", "etl")
    assert "3 dead job(s) matching queue=etl" in etl.stdout
