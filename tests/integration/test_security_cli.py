"""Bad input on the command line, against a real database holding jobs (issue 12).

Every command that takes job ids, a duration, JSON arguments, a queue or task name or a
group key answers input it cannot use with one line naming the problem and exit code 2,
before it changes anything: ids beyond bigint, durations past what a timestamp holds,
text PostgreSQL cannot store (NUL, a lone surrogate: what undecodable bytes on the command
line become), an empty queue name (an unset shell variable: `--queue "$Q"` would otherwise
mean every queue). A role without privileges on the schema gets one line naming it and exit
code 1; a password never appears in an error.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cli_support import UNBROKEN, cli
from ops_seed import Seeded
from unbroken.cli.main import main

HUGE = "99999999999999999999"  # past bigint
FOREVER = "99999999999d"  # past what a timestamp or an interval holds
DEMO = ["--app", "unbroken.demo.app:app"]

# (case, argv, what the one line names); every command that takes such input
BAD_INPUT: list[tuple[str, list[str], str]] = [
    ("show-huge-id", ["jobs", "show", HUGE], "job id"),
    ("watch-huge-id", ["jobs", "watch", HUGE], "job id"),
    ("retry-huge-id", ["jobs", "retry", "1", HUGE, "--yes"], "job id"),
    ("cancel-huge-id", ["jobs", "cancel", HUGE, "--yes"], "job id"),
    ("ls-huge-before", ["jobs", "ls", "--before", HUGE], "--before"),
    ("dlq-ls-huge-limit", ["dlq", "ls", "--limit", HUGE], "--limit"),
    ("ls-forever", ["jobs", "ls", "--older-than", FOREVER], "duration"),
    ("retry-forever", ["jobs", "retry", "--older-than", FOREVER, "--yes"], "duration"),
    ("cancel-forever", ["jobs", "cancel", "--older-than", FOREVER, "--yes"], "duration"),
    ("purge-forever", ["dlq", "purge", "--older-than", FOREVER, "--yes"], "duration"),
    ("stats-forever", ["stats", "--window", FOREVER], "duration"),
    ("stuck-forever", ["stuck", "--longer-than", FOREVER], "duration"),
    ("workers-forever", ["workers", "--silent-after", FOREVER], "duration"),
    ("watch-timeout-nan", ["jobs", "watch", "1", "--timeout", "nan"], "--timeout"),
    ("health-timeout-inf", ["health", "--timeout", "1e400"], "--timeout"),
    ("enqueue-delay-far", ["enqueue", "sync_issues", '["X"]', "--delay", "1e15", *DEMO], "delay"),
    ("ls-args-nul", ["jobs", "ls", "--args", '{"a": "\\u0000"}'], "NUL"),
    ("ls-args-nul-key", ["jobs", "ls", "--args", '{"a\\u0000": 1}'], "NUL"),
    ("ls-args-surrogate", ["jobs", "ls", "--args", '{"a": "\\ud800"}'], "surrogate"),
    ("ls-args-infinity", ["jobs", "ls", "--args", '{"a": 1e999}'], "--args"),
    ("retry-args-nul", ["jobs", "retry", "--args", '{"a": "\\u0000"}', "--yes"], "NUL"),
    ("cancel-args-nul", ["jobs", "cancel", "--args", '{"a": [["\\u0000"]]}', "--yes"], "NUL"),
    ("enqueue-args-nul", ["enqueue", "sync_issues", '["\\u0000"]', *DEMO], "NUL"),
    ("ls-empty-queue", ["jobs", "ls", "--queue", ""], "--queue"),
    ("retry-empty-queue", ["jobs", "retry", "--queue", "", "--yes"], "--queue"),
    ("cancel-empty-queue", ["jobs", "cancel", "--queue", "", "--yes"], "--queue"),
    ("cancel-empty-task", ["jobs", "cancel", "--task", "", "--yes"], "--task"),
    ("dlq-ls-empty-queue", ["dlq", "ls", "--queue", ""], "--queue"),
    ("dlq-retry-empty-queue", ["dlq", "retry", "--queue", "", "--yes"], "--queue"),
    ("dlq-purge-empty-queue", ["dlq", "purge", "--queue", "", "--yes"], "--queue"),
    ("dlq-retry-empty-key", ["dlq", "retry", "", "--yes"], "group key"),
    ("pause-empty", ["queues", "pause", ""], "queue"),
    ("resume-empty", ["queues", "resume", ""], "queue"),
    ("enqueue-empty-queue", ["enqueue", "sync_issues", '["X"]', "--queue", "", *DEMO], "queue"),
    ("worker-empty-queue", ["worker", "--burst", "--queue", "", *DEMO], "queue"),
]

# Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape).
UNDECODABLE: list[tuple[str, list[bytes], str]] = [
    ("ls-queue", [b"jobs", b"ls", b"--queue", b"\xff"], "--queue"),
    ("ls-task", [b"jobs", b"ls", b"--task", b"mail\xff"], "--task"),
    ("ls-args", [b"jobs", b"ls", b"--args", b"\xff"], "--args"),
    ("cancel-queue", [b"jobs", b"cancel", b"--queue", b"\xfe", b"--yes"], "--queue"),
    ("dlq-retry-key", [b"dlq", b"retry", b"\xff", b"--yes"], "group key"),
    ("dlq-ls-task", [b"dlq", b"ls", b"--task", b"\xff"], "--task"),
    ("pause", [b"queues", b"pause", b"\xff"], "queue"),
    ("worker-queue", [b"worker", b"--burst", b"--queue", b"\xff", *map(str.encode, DEMO)], "queue"),
]

# A NUL cannot travel in argv; `main(argv)` takes one (a wrapper script, a test).
RAW_NUL: list[tuple[str, list[str], str]] = [
    ("ls-queue", ["jobs", "ls", "--queue", "mail\x00"], "--queue"),
    ("ls-args", ["jobs", "ls", "--args", "a\x00b"], "--args"),
    ("cancel-task", ["jobs", "cancel", "--task", "t\x00", "--yes"], "--task"),
    ("dlq-purge-key", ["dlq", "purge", "k\x00", "--yes"], "group key"),
    ("pause", ["queues", "pause", "q\x00"], "queue"),
]


def snapshot(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        jobs = conn.execute("SELECT id, state::text, queue FROM unbroken.jobs ORDER BY id")
        queues = conn.execute("SELECT name, paused FROM unbroken.queues ORDER BY name")
        return [*jobs.fetchall(), *queues.fetchall()]


def assert_bad_input(result: subprocess.CompletedProcess[Any], names: str) -> None:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result.returncode == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert names in lines[0], stderr
    assert not result.stdout, result.stdout


@pytest.mark.parametrize(("case", "argv", "names"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    database_url: str, seeded: Seeded, case: str, argv: list[str], names: str
) -> None:
    before = snapshot(database_url)
    result = cli(database_url, *argv)
    assert_bad_input(result, names)
    assert snapshot(database_url) == before


@pytest.mark.parametrize(("case", "argv", "names"), UNDECODABLE, ids=[c[0] for c in UNDECODABLE])
def test_undecodable_bytes_are_one_line_exit_2(
    database_url: str, seeded: Seeded, case: str, argv: list[bytes], names: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    env.update(UNBROKEN_DATABASE_URL=database_url, UNBROKEN_STARTUP_WAIT="2", COLUMNS="200")
    before = snapshot(database_url)
    result = subprocess.run(
        [UNBROKEN.encode(), *argv],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert_bad_input(result, names)
    assert "surrogate" in result.stderr.decode(), result.stderr
    assert snapshot(database_url) == before


@pytest.mark.parametrize(("case", "argv", "names"), RAW_NUL, ids=[c[0] for c in RAW_NUL])
def test_a_raw_nul_is_one_line_exit_2(
    database_url: str,
    seeded: Seeded,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    argv: list[str],
    names: str,
) -> None:
    monkeypatch.setenv("UNBROKEN_DATABASE_URL", database_url)
    before = snapshot(database_url)
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert names in lines[0], err
    assert "NUL" in lines[0], err
    assert not out
    assert snapshot(database_url) == before


def test_a_role_without_privileges_gets_one_line_and_exit_1(
    database_url: str, seeded: Seeded
) -> None:
    """Connected, but the role may not use the schema: "permission denied" names the role
    and where the grants are described; no traceback, exit code 1 (a runtime error)."""
    role = f"{database_url.rsplit('/', 1)[1]}_nobody"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        url = make_conninfo(database_url, user=role)
        before = snapshot(database_url)
        for argv in (
            ["jobs", "ls"],
            ["jobs", "show", "1"],
            ["jobs", "cancel", "1", "--yes"],
            ["dlq", "ls"],
            ["queues", "pause", "default"],
            ["stats"],
        ):
            result = cli(url, *argv)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == 1, (argv, result.stderr)
            assert len(lines) == 1, (argv, result.stderr)
            assert "permission denied" in lines[0], lines[0]
            assert role in lines[0], lines[0]
            assert "docs/security.md" in lines[0], lines[0]
        assert snapshot(database_url) == before
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


PASSWORD_COMMANDS = [
    ["jobs", "ls"],
    ["jobs", "cancel", "1", "--yes"],
    ["db", "status"],
    ["db", "migrate"],
    ["config", "--json"],
    ["health"],
    ["enqueue", "sync_issues", '["X"]', *DEMO],
    ["worker", "--burst", *DEMO],
]


@pytest.mark.parametrize("password", ["s3cr%zzet", "s3cr%et", "s3cr%00et", "p@ss%w0rd", "%%%"])
def test_a_password_with_a_bare_percent_never_appears(password: str) -> None:
    """As written (libpq cannot parse it, or an @ in it leaves the rest in the host: exit 2,
    one line naming the variable) and percent-encoded on a port nobody listens on
    (unreachable: exit 3, or unhealthy: 1)."""
    for url, codes in (
        (f"postgresql://bob:{password}@127.0.0.1:1/none", {2}),
        (f"postgresql://bob:{password.replace('%', '%25')}@127.0.0.1:1/none", {2}),
        (f"postgresql://bob:{quote(password, safe='')}@127.0.0.1:1/none", {0, 1, 3}),
    ):
        if "@" not in password and "%25" in url:
            codes = {0, 1, 3}
        for argv in PASSWORD_COMMANDS:
            result = cli(url, *argv, timeout=30)
            shown = result.stdout + result.stderr
            for piece in ("s3cr", "w0rd", "%%%"):
                assert piece not in shown, shown
            assert result.returncode in codes, (argv, shown)
            assert "Traceback" not in shown, shown
            if result.returncode == 2:
                assert len(result.stderr.strip().splitlines()) == 1, shown
                assert "UNBROKEN_DATABASE_URL" in result.stderr, shown
