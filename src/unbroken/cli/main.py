"""Entry point: builds the Typer app and turns unbroken's errors into one line + exit code.

A user who mistypes a setting or a URL gets one line naming the problem and exit code 2,
never a traceback; an unreachable database is exit code 3.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from unbroken.errors import (
    ConfigError,
    DatabaseUnavailable,
    EmbeddedServerError,
    MigrationError,
    UnbrokenError,
)
from unbroken.logs import JsonFormatter, PlainFormatter

app = typer.Typer(
    name="unbroken",
    help="unbroken: PostgreSQL-backed jobs and pipelines that survive their database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err_console = Console(stderr=True)


def _register() -> None:
    # Each module adds its commands to `app`; imported here so `unbroken --help` lists all.
    from unbroken.cli import db

    db.register(app)
    for name in ("worker", "ops", "demo", "dashboard_cmd"):
        try:
            module = __import__(f"unbroken.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"unbroken.cli.{name}":
                raise
            continue
        module.register(app)


LOG_FORMATS = ("plain", "json")


def setup_logging(verbose: bool = False, log_format: str | None = None) -> None:
    """Log to stderr in `log_format` (else UNBROKEN_LOG_FORMAT, else plain).

    plain: one line per record; on a terminal, rich's aligned and coloured columns.
    json: one object per line with fixed keys (unbroken.logs.JsonFormatter).
    The level is UNBROKEN_LOG_LEVEL (default INFO); `verbose` (-v) adds unbroken's DEBUG
    lines, among them each job's start and success. Calling it again replaces the setup.
    """
    chosen = log_format or os.environ.get("UNBROKEN_LOG_FORMAT") or "plain"
    if chosen not in LOG_FORMATS:
        source = "--log-format" if log_format else "UNBROKEN_LOG_FORMAT"
        raise ConfigError(f"{source}: must be plain or json (got {chosen!r})")
    level = os.environ.get("UNBROKEN_LOG_LEVEL", "INFO").upper()
    handler: logging.Handler
    if chosen == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:  # a file or a pipe: never wrapped at a width, one record per line
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PlainFormatter())
    logging.basicConfig(level=getattr(logging, level, logging.INFO), handlers=[handler], force=True)
    logging.getLogger("unbroken").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (DatabaseUnavailable, EmbeddedServerError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(3)
    except (MigrationError, UnbrokenError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
