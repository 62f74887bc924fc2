"""Entry point: builds the Typer app and turns unbroken's errors into one line + exit code.

A user who mistypes a setting, a URL or an option gets one line naming the problem and exit
code 2, never a traceback; an unreachable database is exit code 3. A value the database
refuses all the same (the options are checked as they are parsed: unbroken.cli.inputs) is
bad input too; a role without the privileges a command needs is a runtime error, 1.

How a command reaches its database is decided here, once, by the command's name (`ACCESS`):
only the commands that run work may start the embedded server, and only a worker waits for
an unreachable database; every other command answers at once.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys

import psycopg
import typer
import typer._click.exceptions as usage  # typer 0.29 vendors click: its errors live here
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from unbroken.db.conninfo import error_line
from unbroken.db.target import Access, set_access
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

# Commands not named here only look at the database or act on what is in it: they never
# start the embedded server (after `unbroken db stop` they say how to start it) and fail at
# once when the database does not answer. `db start` and `db migrate` ask for a start
# themselves (unbroken.cli.db).
ACCESS: dict[str, Access] = {
    "worker": Access(may_start_embedded=True, fail_fast=False),  # waits: UNBROKEN_STARTUP_WAIT
    "enqueue": Access(may_start_embedded=True, fail_fast=True),
    "demo": Access(may_start_embedded=True, fail_fast=True),
}
LOOK_ONLY = Access(may_start_embedded=False, fail_fast=True)


def package_version() -> str:
    try:
        return importlib.metadata.version("unbroken")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        from unbroken import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"unbroken {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    set_access(ACCESS.get(ctx.invoked_subcommand or "", LOOK_ONLY))


def _register() -> None:
    # Each module adds its commands to `app`; imported here so `unbroken --help` lists all.
    from unbroken.cli import db

    db.register(app)
    for name in (
        "worker",
        "jobs",
        "dlq",
        "queues",
        "prune",
        "schedules",
        "workflows",
        "pipelines",
        "inspect",
        "demo",
        "dashboard_cmd",
    ):
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
    previous = set_access(LOOK_ONLY)  # the callback sets each command's; restored at the end
    try:
        # Not standalone: click's own errors come here, to be printed as one line like ours.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)  # a typer.Exit(code) that click returned instead of raising
    except usage.NoArgsIsHelpError as exc:  # `unbroken dlq`: the help, as standalone shows it
        exc.show()
        sys.exit(exc.exit_code)
    except usage.UsageError as exc:  # the option parser's: bad input like any other
        where = exc.ctx.command_path if exc.ctx is not None else "unbroken"
        line = escape(" ".join(exc.format_message().split()))
        err_console.print(
            f"[red]error:[/red] {escape(where)}: {line} (see `{escape(where)} --help`)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except usage.ClickException as exc:
        err_console.print(f"[red]error:[/red] {escape(error_line(exc))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-C or EOF at a prompt
        err_console.print("aborted", highlight=False)
        sys.exit(1)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (DatabaseUnavailable, EmbeddedServerError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(3)
    except (MigrationError, UnbrokenError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except psycopg.DataError as exc:  # a value no check foresaw: still the input's fault
        line = escape(error_line(exc))
        err_console.print(f"[red]error:[/red] the database refused a value: {line}", soft_wrap=True)
        sys.exit(2)
    except psycopg.errors.InsufficientPrivilege as exc:  # outside the operator store
        line = escape(error_line(exc))
        err_console.print(f"[red]error:[/red] {line} (see docs/security.md)", soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        set_access(previous)
