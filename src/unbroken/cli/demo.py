"""`unbroken demo`: a Jira-like ETL of 30,000 issues, with live progress and optional chaos."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    chaos: bool = typer.Option(
        False, "--chaos", help="Restart the database twice and SIGKILL the worker once."
    ),
    timeout: float = typer.Option(600.0, help="Give up after this many seconds."),
) -> None:
    """Sync 30,000 issues and 45,000 changelogs in checkpointed chunks, then check the sink."""
    import logging

    from unbroken.cli.main import setup_logging
    from unbroken.demo.run import run_demo

    setup_logging()
    logging.getLogger("unbroken").setLevel(logging.WARNING)
    raise typer.Exit(run_demo(chaos=chaos, timeout=timeout))
