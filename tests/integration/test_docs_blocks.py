"""Every fenced code block of README.md and docs/*.md runs as written (tests/docs_blocks.py
has the rules), against a throwaway database; fragments are marked and stay few."""

from __future__ import annotations

import ast
import configparser
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from apps.harness import free_port, wait_until
from docs_blocks import (
    DOCUMENTS,
    MAX_FRAGMENTS,
    NOT_CODE,
    PYTHON,
    REPO,
    SHELL,
    Block,
    blocks,
    commands,
    serves,
    skip_reason,
)

BIN = str(Path(sys.executable).parent)


class Reader:
    """Runs one document's blocks in order, in one directory, as its reader would."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.roles: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
        self.env.update(
            UNBROKEN_DATABASE_URL=url, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        )

    def run(self, block: Block) -> str | None:
        """None when the block ran (or its rule says it need not), else what went wrong."""
        if block.run_elsewhere is not None:
            name, path = block.run_elsewhere
            test = REPO / path
            if not test.exists() or name not in test.read_text():
                return f"marked as run by {path}, which does not exist or never names {name}"
            return None
        if block.example is not None:
            if not block.example.exists() or block.example.read_text() != block.code:
                return f"differs from {block.example.relative_to(REPO)}: copy the file"
            return None
        if block.fragment:
            if block.language in PYTHON:
                ast.parse(block.code)
            return None
        if block.language in PYTHON:
            return self.python(block)
        if block.language in SHELL:
            for command in commands(block):
                problem = self.shell(command)
                if problem is not None:
                    return f"`{command}`: {problem}"
            return None
        if block.language == "sql":
            return self.sql(block)
        if block.language == "ini":
            configparser.ConfigParser(inline_comment_prefixes=(";",)).read_string(block.code)
            return None
        if block.language == "yaml":
            return yaml_problem(block)
        if block.language in NOT_CODE:
            return None
        return f"no rule runs a {block.language or 'plain'} block: give it a language or a mark"

    def python(self, block: Block) -> str | None:
        (self.workdir / block.file_name).write_text(block.code)
        return self.finished([sys.executable, block.file_name], timeout=180)

    def shell(self, command: str) -> str | None:
        if skip_reason(command) is not None:
            return None
        kind = serves(command)
        if kind is None:
            return self.finished(["bash", "-c", command], timeout=180)
        return self.serve(command, kind)

    def finished(self, argv: list[str], *, timeout: float) -> str | None:
        result = subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        if result.returncode == 0:
            return None
        return f"exit {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"

    def serve(self, command: str, kind: str) -> str | None:
        """Start a command that serves until stopped, see it up, SIGTERM it: exit 0."""
        port = free_port()
        if kind == "dashboard":
            command = f"{command} --port {port}"
        log = self.workdir / f"{kind}.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.workdir,
                env=self.env,
                stdout=err,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            if kind == "worker":
                wait_until(
                    lambda: proc.poll() is not None or " started: queues " in log.read_text(),
                    timeout=60,
                    what="the worker's start",
                )
            else:
                wait_until(
                    lambda: proc.poll() is not None or answers(port), timeout=60, what="dashboard"
                )
            if proc.poll() is not None:
                return f"exited {proc.returncode} before it was up\n{log.read_text()[-3000:]}"
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # uvicorn (the dashboard) shuts down and then re-raises the signal it caught.
        clean = code == 0 or (kind == "dashboard" and code == -signal.SIGTERM)
        if clean and "Traceback" not in log.read_text():
            return None
        return f"exit {code} after SIGTERM\n{log.read_text()[-3000:]}"

    def sql(self, block: Block) -> str | None:
        with psycopg.connect(self.url) as conn:
            for role in re.findall(r"ALTER ROLE (\w+)", block.code):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
                if exists.fetchone() is None:
                    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
                    self.roles.append(role)
            conn.execute(block.code.encode())
        return None

    def job_errors(self) -> list[str]:
        """Jobs the blocks enqueued that recorded an error: a block's task that failed."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('unbroken.jobs')").fetchone() == (None,):
                return []
            rows = conn.execute(
                "SELECT id, task, state, errors->-1->>'message' FROM unbroken.jobs"
                " WHERE errors <> '[]' ORDER BY id LIMIT 5"
            ).fetchall()
        return [f"job {i} {task} ({state}): {message}" for i, task, state, message in rows]

    def close(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for role in self.roles:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_block_runs_as_written(document: Path, database_url: str, tmp_path: Path) -> None:
    reader = Reader(database_url, tmp_path)
    failures: list[str] = []
    try:
        for block in blocks(document):
            problem = reader.run(block)
            if problem is not None:
                failures.append(f"{block.where} ({block.language}): {problem}")
        failures += reader.job_errors()
    finally:
        reader.close()
    assert not failures, "\n\n".join(failures)


def test_fragments_stay_few() -> None:
    fragments = [b.where for doc in DOCUMENTS for b in blocks(doc) if b.fragment]
    assert len(fragments) <= MAX_FRAGMENTS, f"{len(fragments)} fragments: {fragments}"


def yaml_problem(block: Block) -> str | None:
    """A Kubernetes manifest: every YAML document parses and names its apiVersion and kind."""
    try:
        import yaml
    except ImportError:
        return "PyYAML is needed to check yaml blocks: pip install -e '.[dev]'"
    try:
        documents = list(yaml.safe_load_all(block.code))
    except yaml.YAMLError as exc:
        return f"does not parse: {str(exc).splitlines()[0]}"
    for doc in documents:
        if not (isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")):
            return "a YAML document without apiVersion and kind (not a manifest)"
    return None
