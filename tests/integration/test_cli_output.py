"""What every operator command shares (unbroken.cli.output): help, `--json`, and a clear
word when the schema is missing."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from cli_support import cli, cli_json, cli_tty
from ops_seed import Seeded, error


def test_every_operator_command_has_help_and_json(database_url: str) -> None:
    commands = [
        ["jobs", "ls"],
        ["jobs", "show"],
        ["jobs", "watch"],
        ["jobs", "retry"],
        ["jobs", "cancel"],
        ["dlq", "ls"],
        ["dlq", "retry"],
        ["dlq", "purge"],
        ["queues"],
        ["queues", "pause"],
        ["queues", "resume"],
        ["stats"],
        ["stuck"],
        ["workers"],
        ["health"],
    ]
    for command in commands:
        result = cli(database_url, *command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "--json" in result.stdout, command


def test_reading_commands_name_a_missing_schema(database_url: str) -> None:
    result = cli(database_url, "jobs", "ls")
    assert result.returncode == 1
    assert "run `unbroken db migrate`" in result.stderr


BOX = set("│┃─━┏┓┗┛┡┩└┘╭╮╰╯")
LONG_ID = 9_007_199_254_740_993  # 16 digits: longer than a narrow terminal's share for it


def _add_long_job(url: str) -> None:
    """A dead job with a long id, long arguments and a long error message."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO unbroken.jobs (id, queue, task, args, state, attempt, max_attempts,"
            " attempted_at, finished_at, errors) OVERRIDING SYSTEM VALUE VALUES"
            " (%s, 'default', 'emails.send_welcome_message', %s, 'dead', 3, 3,"
            " now() - interval '2 minutes', now() - interval '1 minute', %s)",
            [
                LONG_ID,
                Jsonb({"args": [], "kwargs": {"user": "x" * 80, "note": "a b c " * 10}}),
                Jsonb([error(3, "ValueError", "a long message " * 10)]),
            ],
        )


def _rows_with(lines: list[str], first: str) -> list[str]:
    """The lines whose first field is `first` (an id, a group's key, a task's queue)."""
    return [line for line in lines if line.split()[:1] == [first]]


def test_tables_piped_at_40_columns_print_one_line_per_row(
    database_url: str, seeded: Seeded
) -> None:
    _add_long_job(database_url)
    jobs = cli_json(database_url, "jobs", "ls", "--limit", "100")["jobs"]
    listed = cli(database_url, "jobs", "ls", "--limit", "100", columns=40)
    assert listed.returncode == 0, listed.stderr
    assert not BOX & set(listed.stdout), listed.stdout
    lines = listed.stdout.splitlines()
    for job in jobs:  # each row exactly one line, with its full id, state and task
        rows = _rows_with(lines, str(job["id"]))
        assert len(rows) == 1, (job["id"], listed.stdout)
        assert job["state"] in rows[0].split(), rows[0]
        assert job["task"] in rows[0].split(), rows[0]
    groups = cli_json(database_url, "dlq", "ls")["groups"]
    dlq = cli(database_url, "dlq", "ls", columns=40)
    assert not BOX & set(dlq.stdout), dlq.stdout
    for group in groups:
        rows = _rows_with(dlq.stdout.splitlines(), group["key"])
        assert len(rows) == 1, dlq.stdout
        assert group["task"] in rows[0], rows[0]
    for command in (["queues"], ["stats"], ["stuck"], ["workers"]):
        shown = cli(database_url, *command, columns=40)
        assert shown.returncode == 0, shown.stderr
        assert not BOX & set(shown.stdout), (command, shown.stdout)
    stats = cli(database_url, "stats", columns=40).stdout.splitlines()
    assert len([line for line in stats if "emails.send" in line.split()]) == 1, stats
    stuck = cli(database_url, "stuck", columns=40).stdout.splitlines()
    assert len(_rows_with(stuck, str(seeded.stuck))) == 1, stuck


def test_a_narrow_terminal_keeps_ids_states_and_tasks_whole(
    database_url: str, seeded: Seeded
) -> None:
    _add_long_job(database_url)
    shown = cli_tty(database_url, "jobs", "ls", "--state", "dead", columns=40)
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 40, shown
    for job_id in (LONG_ID, *seeded.dead_http, seeded.dead_hostile):
        rows = _rows_with(lines, str(job_id))
        assert len(rows) == 1, (job_id, shown)
        assert "dead" in rows[0].split(), rows[0]
    assert "emails.send_welcome_message" in "".join(shown.split())  # folded, not cut
    said = " ".join(shown.split())
    assert "not shown at this width: queue, try, age, args, last error" in said
    medium = cli_tty(database_url, "jobs", "ls", "--state", "dead", columns=90).splitlines()
    assert max(map(len, medium)) <= 90, medium
    for job_id in (LONG_ID, *seeded.dead_http, seeded.dead_hostile):
        assert len(_rows_with(medium, str(job_id))) == 1, medium  # long cells cut, with "…"
    assert "…" in _rows_with(medium, str(LONG_ID))[0]
    wide = cli_tty(database_url, "jobs", "ls", "--state", "dead", columns=200)
    assert "ValueError: a long message" in wide  # a wide terminal shows the rest
