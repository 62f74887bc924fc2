"""`unbroken demo`: a Jira-like ETL of 30,000 issues, with live progress and optional chaos;
`unbroken demo --cdc`: a table's changes streamed into a sink (unbroken.demo.cdc)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    chaos: bool = typer.Option(
        False, "--chaos", help="Restart the database twice and SIGKILL the worker once."
    ),
    cdc: bool = typer.Option(
        False,
        "--cdc",
        help="Instead: stream a table's changes into a sink while they are written (CDC), "
        "on the embedded server switched to wal_level=logical.",
    ),
    timeout: float = typer.Option(600.0, help="Give up after this many seconds."),
) -> None:
    """Sync 30,000 issues and 45,000 changelogs in checkpointed chunks, then check the sink;
    with --cdc, stream 20,000 changes of a table into a sink, then check sink == source."""
    import logging

    from unbroken.cli.main import setup_logging
    from unbroken.errors import ConfigError

    setup_logging()
    logging.getLogger("unbroken").setLevel(logging.WARNING)
    if cdc:
        if chaos:
            raise ConfigError("--cdc and --chaos: choose one")
        from unbroken.demo.cdc import run_cdc_demo

        raise typer.Exit(run_cdc_demo(timeout=timeout))
    from unbroken.demo.run import run_demo

    raise typer.Exit(run_demo(chaos=chaos, timeout=timeout))
