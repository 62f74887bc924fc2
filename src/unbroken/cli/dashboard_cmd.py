"""`unbroken dashboard`: serve the web dashboard with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from unbroken.errors import ConfigError
from unbroken.settings import load_settings


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)


def dashboard(
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond loopback it needs credentials.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8787,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Show everything, allow no action.")
    ] = False,
    poll: Annotated[float, typer.Option(min=0.5, help="Seconds between live updates.")] = 3.0,
) -> None:
    """Serve the web dashboard: overview, jobs, long jobs, dead letters, queues, health.

    Listens on 127.0.0.1 unless told otherwise; on any other address it refuses to start
    without UNBROKEN_DASHBOARD_USER and UNBROKEN_DASHBOARD_PASSWORD (HTTP basic auth), or
    with a weak password (under 12 characters, or a common one). It answers requests for
    loopback names, the --host address, and the names in UNBROKEN_DASHBOARD_ALLOWED_HOSTS
    (comma-separated), and refuses any other Host with a 400 (docs/security.md).
    """
    try:
        import uvicorn

        from unbroken.dashboard import check_bind, create_app
        from unbroken.dashboard.edge import allowed_hosts_from_env, with_bound_host
        from unbroken.dashboard.security import credentials_from_env
    except ImportError as exc:
        raise ConfigError(
            f"the dashboard needs its extra: pip install 'unbroken[dashboard]' ({exc.name} "
            "is missing)"
        ) from None
    credentials = credentials_from_env()
    check_bind(host, credentials)
    settings = load_settings()
    hosts = with_bound_host(allowed_hosts_from_env(), host)
    app = create_app(
        settings,
        read_only=read_only,
        credentials=credentials,
        poll_interval=poll,
        allowed_hosts=hosts,
    )
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"unbroken dashboard on http://{shown}:{port}/"
        + (" (read-only)" if read_only else "")
        + (" (basic auth)" if credentials else ""),
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
