"""`unbroken queues` as a user runs it: backlog by priority, pause and resume."""

from __future__ import annotations

from cli_support import cli, cli_json
from ops_seed import Seeded


def test_queues_pause_and_resume(database_url: str, seeded: Seeded) -> None:
    queues = {q["name"]: q for q in cli_json(database_url, "queues")["queues"]}
    assert queues["default"]["available"] == 3
    assert [p["priority"] for p in queues["default"]["priorities"]] == [10, 0]
    assert queues["reports"]["paused"] is True
    assert cli_json(database_url, "queues", "pause", "etl") == {"queue": "etl", "paused": True}
    assert cli_json(database_url, "queues", "resume", "reports")["paused"] is False
    queues = {q["name"]: q for q in cli_json(database_url, "queues")["queues"]}
    assert queues["etl"]["paused"] is True
    assert queues["reports"]["paused"] is False
    table = cli(database_url, "queues")
    assert "(paused)" in table.stdout


def test_pausing_a_queue_nothing_uses_warns(database_url: str, seeded: Seeded) -> None:
    typo = cli(database_url, "queues", "pause", "eetl", "--json")
    assert typo.returncode == 0  # paused all the same: a queue may be paused before its first job
    assert typo.stderr.count("\n") == 1
    assert "queue 'eetl' has no jobs and no worker fetches from it" in typo.stderr
    assert "known: default, etl, reports" in typo.stderr
    queues = {q["name"]: q for q in cli_json(database_url, "queues")["queues"]}
    assert queues["eetl"]["paused"] is True
    known = cli(database_url, "queues", "pause", "etl")
    assert (known.returncode, known.stderr) == (0, "")
