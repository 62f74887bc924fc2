"""Every example runs, against a fresh database: the scripts as scripts, the web apps
(Django, FastAPI) served for real, called over HTTP, their jobs run by a burst worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apps.harness import free_port, wait_until

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
BIN = Path(sys.executable).parent


def example_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    env.update(UNBROKEN_DATABASE_URL=database_url, UNBROKEN_STARTUP_WAIT="5")
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, database_url: str) -> None:
    run([sys.executable, str(path)], EXAMPLES_DIR, example_env(database_url))


def post(url: str, *, form: dict[str, str] | None = None, body: Any = None) -> tuple[int, Any]:
    """(status, parsed JSON or text) of a POST; an error status is an answer, not a raise."""
    if form is not None:
        data, kind = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    else:
        data, kind = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def serving(argv: list[str], port: int, cwd: Path, env: dict[str, str]) -> Iterator[Path]:
    """A web server process, up (its port accepts), stopped with SIGTERM afterwards."""
    log = cwd / f".server-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: proc.poll() is not None or listening(port), timeout=60, what=argv[0])
        assert proc.poll() is None, log.read_text()
        yield log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.unlink()


def jobs(database_url: str) -> list[tuple[str, Any, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT task, args, state::text FROM unbroken.jobs ORDER BY id")
        return rows.fetchall()


def test_django_enqueues_in_the_views_transaction(database_url: str) -> None:
    """The view's row and its job commit together or not at all; on_commit enqueues only
    after a commit; a burst worker runs what was enqueued."""
    project, env = EXAMPLES_DIR / "django_app", example_env(database_url)
    run([sys.executable, "manage.py", "migrate"], project, env)
    run([str(BIN / "unbroken"), "db", "migrate"], project, env)
    port = free_port()
    argv = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    with serving(argv, port, project, env):
        base = f"http://127.0.0.1:{port}"
        status, committed = post(f"{base}/signup", form={"email": "ada@example.com"})
        assert status == 201, committed
        status, text = post(f"{base}/signup", form={"email": "bob@example.invalid"})
        assert status == 400, text
        status, after = post(f"{base}/signup-on-commit", form={"email": "cy@example.com"})
        assert status == 201, after
        status, text = post(f"{base}/signup-on-commit", form={"email": "di@example.invalid"})
        assert status == 400, text
    with psycopg.connect(database_url) as conn:
        emails = conn.execute("SELECT email FROM public.shop_signup ORDER BY id").fetchall()
    assert emails == [("ada@example.com",), ("cy@example.com",)]
    task = "shop.tasks.send_welcome"
    want = [
        {"args": [committed["signup"]], "kwargs": {}},
        {"args": [after["signup"]], "kwargs": {}},
    ]
    assert jobs(database_url) == [(task, want[0], "available"), (task, want[1], "available")]
    out = run(
        [str(BIN / "unbroken"), "worker", "--app", "shop.tasks:app", "-q", "mail", "--burst"],
        project,
        env,
    )
    assert f"welcome, signup {committed['signup']}" in out
    assert [state for *_, state in jobs(database_url)] == ["succeeded", "succeeded"]


def test_fastapi_endpoint_awaits_the_enqueue(database_url: str) -> None:
    env, port = example_env(database_url), free_port()
    uvicorn = [str(BIN / "uvicorn"), "fastapi_app:api", "--port", str(port)]
    with serving(uvicorn, port, EXAMPLES_DIR, env):
        status, reply = post(f"http://127.0.0.1:{port}/signups", body={"email": "ada@example.com"})
        assert status == 201, reply
    assert jobs(database_url) == [
        ("fastapi_app.send_welcome", {"args": ["ada@example.com"], "kwargs": {}}, "available")
    ]
    out = run(
        [str(BIN / "unbroken"), "worker", "--app", "fastapi_app:jobs", "-q", "mail", "--burst"],
        EXAMPLES_DIR,
        env,
    )
    assert "welcome, ada@example.com" in out
    assert [state for *_, state in jobs(database_url)] == ["succeeded"]
