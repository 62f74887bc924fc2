"""`unbroken worker` and `unbroken enqueue`: the commands that need the user's app."""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

import typer

from unbroken.app import App
from unbroken.errors import ConfigError, EnqueueError
from unbroken.settings import MAX_SECONDS


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("enqueue")(enqueue)


def load_app(spec: str | None) -> App:
    """Import `module:attribute` (the current directory is importable) and check it is an App."""
    if not spec:
        raise ConfigError("--app: no app given; pass --app module:app or set UNBROKEN_APP")
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--app {spec}: cannot import module {exc.name!r}") from None
    found = getattr(module, attr, None)
    if not isinstance(found, App):
        raise ConfigError(f"--app {spec}: {module_name}.{attr} is not an unbroken.App")
    return found


def worker(
    app_spec: str = typer.Option(
        None, "--app", envvar="UNBROKEN_APP", help="The app to run, as module:attribute."
    ),
    queue: list[str] = typer.Option(
        None, "--queue", "-q", help="Queue to fetch from (repeatable). Env: UNBROKEN_QUEUES."
    ),
    concurrency: int = typer.Option(
        None, "--concurrency", "-c", help="Jobs run at once. Env: UNBROKEN_CONCURRENCY."
    ),
    shutdown_timeout: float = typer.Option(
        None,
        "--shutdown-timeout",
        help="Seconds running jobs get after SIGTERM. Env: UNBROKEN_SHUTDOWN_TIMEOUT.",
    ),
    burst: bool = typer.Option(
        False,
        "--burst",
        envvar="UNBROKEN_BURST",
        help="Exit when no job of its queues is available or due within --burst-wait.",
    ),
    burst_wait: float = typer.Option(
        None,
        "--burst-wait",
        envvar="UNBROKEN_BURST_WAIT",
        min=0,
        max=MAX_SECONDS,
        help="With --burst: seconds ahead to wait for a scheduled job or a retry to be due "
        "(default 30).",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, with each job's start and success."
    ),
    log_format: str = typer.Option(
        None,
        "--log-format",
        help="plain (default) or json: one object per line. Env: UNBROKEN_LOG_FORMAT.",
    ),
    restart_on_memory: bool = typer.Option(
        False,
        "--restart-on-memory",
        help="Run the worker as a child process and start a new one whenever it exits for "
        "UNBROKEN_MEMORY_HARD_MB (exit code 75).",
    ),
) -> None:
    """Run a worker: fetch jobs, run them, record outcomes, until SIGTERM/SIGINT.

    Exits 0 after a clean shutdown, and 75 after handing its jobs back above the hard
    memory limit (UNBROKEN_MEMORY_HARD_MB): a supervisor should start it again.
    """
    from unbroken.cli.main import setup_logging

    setup_logging(verbose, log_format)
    if restart_on_memory:
        from unbroken.cli.restart import supervise

        raise typer.Exit(supervise(sys.argv[1:]))
    the_app = load_app(app_spec)
    if log_format is None and the_app.settings.log_format != (
        os.environ.get("UNBROKEN_LOG_FORMAT") or "plain"
    ):
        setup_logging(verbose, the_app.settings.log_format)  # set in code: App(log_format=...)
    overrides: dict[str, Any] = {}
    if queue:
        overrides["queues"] = ",".join(queue)
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    if shutdown_timeout is not None:
        overrides["shutdown_timeout"] = shutdown_timeout
    if burst_wait is not None:
        overrides["burst_wait"] = burst_wait  # a Worker argument, not a setting
    running = the_app.worker(burst=burst, **overrides)
    running.run()
    if running.exit_code:
        raise typer.Exit(running.exit_code)


def enqueue(
    task: str = typer.Argument(..., help="Task name as registered (see `--app`)."),
    args_json: str = typer.Argument(
        "[]", help='Arguments as JSON: a list (positional) or {"args": [...], "kwargs": {...}}.'
    ),
    app_spec: str = typer.Option(None, "--app", envvar="UNBROKEN_APP", help="module:attribute"),
    queue: str = typer.Option(None, "--queue", "-q", help="Override the task's queue."),
    priority: int = typer.Option(None, "--priority", "-p", help="Larger runs first."),
    delay: float = typer.Option(None, "--delay", help="Seconds from now before it may run."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Enqueue one job of a registered task."""
    the_app = load_app(app_spec)
    found = the_app.tasks.get(task)
    if found is None:
        close = [n for n in the_app.tasks if n.endswith(f".{task}") or n == task]
        if len(close) == 1:
            found = the_app.tasks[close[0]]
        else:
            known = ", ".join(sorted(the_app.tasks)) or "none"
            raise ConfigError(f"task {task!r} is not registered in this app (known: {known})")
    try:
        parsed = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"ARGS_JSON: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(parsed, list):
        args, kwargs = parsed, {}
    elif isinstance(parsed, dict) and set(parsed) <= {"args", "kwargs"}:
        args, kwargs = parsed.get("args", []), parsed.get("kwargs", {})
    elif isinstance(parsed, dict):
        args, kwargs = [], parsed
    else:
        raise ConfigError("ARGS_JSON: must be a JSON list or object")
    placed = found.using(queue=queue, priority=priority, delay=delay)
    try:  # the checks enqueue makes (signature, JSON, size, names), before any connection
        placed.job(*args, **kwargs)
    except EnqueueError as exc:
        raise ConfigError(str(exc)) from None  # bad input: exit code 2, not 1
    job_id = placed.enqueue(*args, **kwargs)
    the_app.close()
    if as_json:
        typer.echo(json.dumps({"id": job_id, "task": found.name}))
    else:
        typer.echo(f"enqueued job {job_id} ({found.name})")
