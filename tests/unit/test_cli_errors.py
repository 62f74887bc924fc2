"""Bad input on the command line: one line naming the problem, exit code 2, nothing started."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys

import pytest


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_within(60, *args, **env)


def run_within(timeout: float, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("UNBROKEN_", "PG"))}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "unbroken", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"UNBROKEN_POOL_MAX_SIZE": "0"}, "UNBROKEN_POOL_MAX_SIZE: Input should be greater than"),
        ({"UNBROKEN_CONCURRENCY": "lots"}, "UNBROKEN_CONCURRENCY: Input should be a valid integer"),
        ({"UNBROKEN_DATABASE_URL": "postgresql://[oops"}, "UNBROKEN_DATABASE_URL: not a valid"),
        ({"DATABASE_URL": "mysql://root@db/app"}, "DATABASE_URL: not a valid"),
        ({"UNBROKEN_LEASE_SECOND": "5"}, "did you mean lease_seconds?"),
    ],
)
def test_bad_setting_is_one_line_and_exit_code_2(env: dict[str, str], expected: str) -> None:
    result = run("db", "url", **env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_password_never_printed(tmp_path: object) -> None:
    result = run("db", "url", UNBROKEN_DATABASE_URL="postgresql://app:hunter2@db:bad/x")
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout


def test_bad_app_spec_is_one_line() -> None:
    result = run("worker", "--app", "no_such_module:app")
    assert result.returncode == 2
    assert "cannot import module 'no_such_module'" in result.stderr


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "ls"],
        ["queues"],
        ["stats"],
        ["workers"],
        ["db", "migrate"],
        ["enqueue", "unbroken.demo.app.sync_issues", '["X"]', "--app", "unbroken.demo.app:app"],
    ],
    ids=["jobs ls", "queues", "stats", "workers", "db migrate", "enqueue"],
)
def test_interactive_command_fails_fast_on_an_unreachable_database(command: list[str]) -> None:
    """One connect attempt, not the worker's start-up wait (UNBROKEN_STARTUP_WAIT, 30 s by
    default): the subprocess timeout is a generous bound, half that wait."""
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/none"
    result = run_within(15, *command, UNBROKEN_DATABASE_URL=url)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "database not reachable" in lines[0]
    assert "127.0.0.1" in lines[0]
    assert "Traceback" not in result.stderr


def test_version_prints_the_installed_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"unbroken {importlib.metadata.version('unbroken')}"


@pytest.mark.parametrize(
    ("args_json", "expected"),
    [
        ('["X", "Y"]', "arguments do not fit its signature: too many positional arguments"),
        ('{"nope": 1}', "arguments do not fit its signature: missing a required argument"),
        ('{"project": "X", "nope": 1}', "got an unexpected keyword argument 'nope'"),
    ],
)
def test_enqueue_arguments_that_do_not_fit_are_bad_input(args_json: str, expected: str) -> None:
    """Checked against the task's signature before any database is reached (the one given
    here does not answer): one line, exit code 2."""
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/none"
    command = ["enqueue", "sync_issues", args_json, "--app", "unbroken.demo.app:app"]
    result = run_within(15, *command, UNBROKEN_DATABASE_URL=url)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "task unbroken.demo.app.sync_issues: " in lines[0]
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "show", "abc"], "unbroken jobs show: Invalid value for 'job_id'"),
        (["jobs", "ls", "--limit", "99999"], "Invalid value for '--limit'"),
        (["jobs", "ls", "--bogus"], "No such option: --bogus"),
        (["dlq", "ls", "--limit", "x"], "Invalid value for '--limit'"),
        (["queues", "pause"], "Missing argument"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
    ids=["id-not-integer", "limit-over", "unknown-option", "limit-text", "missing", "command"],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], expected: str) -> None:
    """What the option parser refuses is bad input like any other: one line naming it and
    where the usage is, exit 2; never a boxed, multi-line message."""
    result = run_within(15, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "--help" in lines[0]


def test_help_and_version_still_exit_0() -> None:
    for args in (["--help"], ["jobs", "ls", "--help"], ["--version"]):
        result = run_within(15, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.strip(), args
