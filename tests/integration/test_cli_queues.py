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
