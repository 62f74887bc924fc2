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


def setup_logging(verbose: bool = False) -> None:
    level = os.environ.get("UNBROKEN_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
    )
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
