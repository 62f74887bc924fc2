"""What every operator command shares (unbroken.cli.output): help, `--json`, and a clear
word when the schema is missing."""

from __future__ import annotations

from cli_support import cli


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
