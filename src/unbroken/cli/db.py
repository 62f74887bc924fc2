"""`unbroken db ...`: the embedded server and the schema."""

from __future__ import annotations

import json

import psycopg
import typer
from rich.console import Console

from unbroken import migrations
from unbroken.db.conninfo import redact
from unbroken.db.target import resolve_target
from unbroken.settings import load_settings

db_app = typer.Typer(help="Manage the database: the embedded server and the schema.")
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.command("config")(config)


def config(
    markdown: bool = typer.Option(False, "--markdown", help="The README's settings table."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show every setting: its variable, current value and why its default is what it is."""
    from unbroken.settings import Settings, settings_table

    if markdown:
        typer.echo(settings_table())
        return
    current = load_settings()
    rows = [
        {
            "variable": f"UNBROKEN_{name.upper()}",
            "value": str(getattr(current, name)),
            "default": str(Settings.model_fields[name].get_default(call_default_factory=True)),
            "why": field.description,
        }
        for name, field in Settings.model_fields.items()
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        value = str(row["value"])
        if str(row["variable"]).endswith("_URL"):
            value = redact(value)
        console.print(f"[bold]{row['variable']}[/bold] = {value}  [dim]{row['why']}[/dim]")


@db_app.command()
def start() -> None:
    """Start the embedded PostgreSQL (or reuse the one already running) and print its URL."""
    settings = load_settings()
    target = resolve_target(settings, may_start_embedded=True, fail_fast=False)
    if not target.embedded:
        console.print(f"a database is configured ({target.source}); nothing to start")
        return
    console.print(f"{target.source}\n{target.redacted()}", highlight=False)


@db_app.command()
def stop() -> None:
    """Stop the embedded PostgreSQL."""
    from unbroken.embedded import LocalServer

    settings = load_settings()
    server = LocalServer(settings.data_dir)
    if not server.is_running():
        console.print(f"embedded PostgreSQL is not running (data in {settings.data_dir})")
        return
    server.stop("fast")
    console.print(f"stopped embedded PostgreSQL (data kept in {settings.data_dir})")


@db_app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Say which database unbroken uses, whether it is running, and its schema version."""
    from unbroken.embedded import LocalServer

    settings = load_settings()
    configured = settings.configured_url()
    info: dict[str, object] = {"schema": settings.schema_name}
    if configured is None:
        server = LocalServer(settings.data_dir)
        running = server.is_running()
        info.update(
            database="embedded",
            data_dir=str(settings.data_dir),
            running=running,
            url=server.url("unbroken") if running else None,
        )
    else:
        info.update(database="configured", url=redact(configured) or "(libpq PG* variables)")
    url = info.get("url")
    if isinstance(url, str) and (configured is not None or info.get("running")):
        try:
            with psycopg.connect(configured or url, connect_timeout=3, autocommit=True) as conn:
                done = migrations.applied_versions(conn, settings.schema_name)
                info["schema_version"] = max(done) if done else 0
                info["latest_version"] = migrations.available()[-1].version
        except psycopg.Error as exc:
            info["error"] = redact(str(exc)).strip().splitlines()[0]
    if as_json:
        typer.echo(json.dumps(info))
        return
    for key, value in info.items():
        console.print(f"{key:>15}: {value}", highlight=False)
    if info.get("running") is False:
        console.print(f"{'':>15}  start it with `unbroken db start`", highlight=False)


@db_app.command()
def url() -> None:
    """Print the database URL; the embedded server's only while it runs (`db start`)."""
    target = resolve_target(load_settings(), may_start_embedded=False, fail_fast=False)
    typer.echo(target.conninfo)


@db_app.command()
def migrate() -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    settings = load_settings()
    target = resolve_target(settings, may_start_embedded=True)
    connect_timeout = settings.connect_timeout
    with psycopg.connect(target.conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
        applied = migrations.migrate(conn, settings.schema_name)
    if applied:
        for m in applied:
            console.print(f"applied {m.version:04d}_{m.name}")
    else:
        console.print(f"schema {settings.schema_name!r} is up to date")


@db_app.command("sql")
def sql(
    schema: str = typer.Option(None, help="Schema name to write (default: the configured one)."),
) -> None:
    """Print the full schema as SQL, for teams that apply migrations with their own tool."""
    typer.echo(migrations.full_schema_sql(schema or load_settings().schema_name))
