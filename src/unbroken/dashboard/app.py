"""The dashboard: a Starlette app, server-rendered with Jinja2, live by polling.

`create_app(settings)` gives an ASGI app that `unbroken dashboard` serves with uvicorn, or
that a user mounts in their own app (`Mount("/jobs", app=create_app(...))`). The pool is
opened on the first request (a mounted sub-app gets no lifespan events) and closed by the
standalone server's lifespan, or by `app.state.dashboard.close()`.

Live updates: every page marks its changing regions `data-live`; app.js fetches the same
URL every few seconds and swaps those regions in, so rendering stays in one place (the
templates) and the script stays small. Chart data travels inside a region as JSON. The same
data is available as JSON under /api/ for scripts.

Every action is a POST with a CSRF token and from this origin (see security.py); a
read-only app renders no action and refuses every POST. Every request passes the Host
allow-list and every response carries the security headers (edge.py); a parameter the
dashboard cannot use is a 400 with its reason (params.py), and a 503 means the database
did not answer within DB_WAIT seconds.

Here: the dashboard's state (its database, opened once) and the URL map. The routes are in
pages.py (HTML) and api.py (JSON, probes, metrics); templates in render.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import psycopg
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from unbroken.dashboard.api import Api
from unbroken.dashboard.edge import HostAllowList, SecurityHeaders, allowed_hosts_from_env
from unbroken.dashboard.pages import Pages
from unbroken.dashboard.params import BadRequest
from unbroken.dashboard.render import HERE, Renderer
from unbroken.dashboard.security import BasicAuth, Csrf, credentials_from_env
from unbroken.dashboard.throttle import LoginThrottle
from unbroken.db._sync.pool import Database
from unbroken.db.conninfo import error_line
from unbroken.db.stats import PoolStats
from unbroken.errors import DatabaseUnavailable, StatementDeadline
from unbroken.metrics import DatabaseCollector, PoolCollector
from unbroken.ops import health
from unbroken.ops.store import OperatorStore
from unbroken.settings import Settings, load_settings

POOL_ROLE = "dashboard"
# Seconds a page waits for a connection: the dashboard's own queries take milliseconds, so
# longer means the database is away (a page says so now, not after pool_acquire_timeout).
DB_WAIT = 2.0
T = TypeVar("T")


class DatabaseDown(Exception):
    """The database did not answer a page's queries: shown as a 503, not a traceback."""


class SchemaMissing(Exception):
    """The database answers but holds no unbroken schema (not migrated): a 503 that says so."""


class GrantMissing(Exception):
    """The dashboard's role lacks a grant a page needs: a 403 that says so."""


class Dashboard:
    """One dashboard's state: its settings, its database (opened on first use) and its
    renderer; the routes (pages.Pages, api.Api) read the store through `store`."""

    def __init__(
        self,
        settings: Settings,
        database: Database | None,
        *,
        read_only: bool,
        secret: bytes | None,
        poll_interval: float,
        title: str,
    ) -> None:
        self.settings = settings
        self.read_only = read_only
        self.csrf = Csrf(secret)
        self.view = Renderer(
            title=title, read_only=read_only, poll_interval=poll_interval, csrf=self.csrf
        )
        self._database = database
        self._owns_database = database is None
        self._opened = False
        self._lock = threading.Lock()
        self.metrics_registry = CollectorRegistry()

    def database(self) -> Database:
        with self._lock:
            if self._database is None:
                from unbroken.db.target import resolve_target

                target = resolve_target(self.settings)
                self._database = Database(target.conninfo, self.settings)
            if not self._opened:
                self._database.pool(POOL_ROLE)
                # One attempt, no start-up wait: a page answers 503 now, and tries again
                # at the next request.
                self._database.open(POOL_ROLE, startup_wait=0)
                store = OperatorStore(self._database.pool(POOL_ROLE), self.settings.schema_name)
                self.metrics_registry.register(DatabaseCollector(store))
                self.metrics_registry.register(PoolCollector(self._database.stats))
                self._opened = True
            return self._database

    def close(self) -> None:
        with self._lock:
            if self._database is not None and self._owns_database:
                self._database.close()
            self._opened = False

    def run(self, fn: Callable[[OperatorStore], T]) -> T:
        """`fn(store)` on one pooled connection (one checkout per request, not per query)."""
        pool = self.database().pool(POOL_ROLE)
        with pool.connection(timeout=min(DB_WAIT, self.settings.pool_acquire_timeout)) as conn:
            return fn(OperatorStore(conn, self.settings.schema_name))

    async def store(self, fn: Callable[[OperatorStore], T]) -> T:
        try:
            return await run_in_threadpool(self.run, fn)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise SchemaMissing(
                f"no unbroken schema {self.settings.schema_name!r} in this database "
                f"({error_line(exc)}): run `unbroken db migrate` (workers also migrate)"
            ) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            raise GrantMissing(
                f"{error_line(exc)}: the dashboard's role lacks a grant "
                "(docs/security.md lists what a read-only or operator role needs)"
            ) from exc
        except (psycopg.Error, DatabaseUnavailable, StatementDeadline) as exc:
            raise DatabaseDown(error_line(exc)) from exc

    def pools(self) -> list[PoolStats]:
        return self._database.stats() if self._database is not None else []

    def health(self, store: OperatorStore) -> health.HealthReport:
        return health.check(store, self.pools())


def create_app(
    settings: Settings | None = None,
    database: Database | None = None,
    *,
    read_only: bool = False,
    credentials: tuple[str, str] | bool | None = True,
    secret: bytes | None = None,
    poll_interval: float = 3.0,
    title: str = "unbroken",
    allowed_hosts: Sequence[str] | None = None,
    login_throttle: LoginThrottle | None = None,
) -> Starlette:
    """The dashboard as an ASGI app.

    `database`: reuse your Database (the dashboard takes a pool named "dashboard" from it);
    by default one is made from `settings`. `credentials`: (user, password) for HTTP basic
    auth; True (default) reads UNBROKEN_DASHBOARD_USER/PASSWORD, None or False means none.
    `secret` signs CSRF tokens (random per app by default; give one when several processes
    serve the same users). `allowed_hosts`: the Host names it answers besides loopback ones
    (default: UNBROKEN_DASHBOARD_ALLOWED_HOSTS; ".example.com" for a domain, "*" for any).
    `login_throttle`: how failed logins are slowed down (throttle.py; defaults there).
    """
    settings = settings or load_settings()
    if credentials is True:
        creds = credentials_from_env()
    elif credentials is False:
        creds = None
    else:
        creds = credentials
    d = Dashboard(
        settings,
        database,
        read_only=read_only,
        secret=secret,
        poll_interval=poll_interval,
        title=title,
    )
    pages, api = Pages(d), Api(d)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(d.close)

    routes = [
        Route("/", pages.overview),
        Route("/jobs", pages.jobs),
        Route("/jobs/confirm", pages.jobs_confirm),
        Route("/jobs/bulk", pages.jobs_bulk, methods=["POST"]),
        Route("/jobs/{job_id:int}", pages.job),
        Route("/jobs/{job_id:int}/{action:str}", pages.job_action, methods=["POST"]),
        Route("/long", pages.long_jobs),
        Route("/dead", pages.dead),
        Route("/dead/confirm", pages.dead_confirm),
        Route("/dead/{action:str}", pages.dead_action, methods=["POST"]),
        Route("/queues", pages.queues),
        Route("/schedules", pages.schedules),
        Route("/pipelines", pages.pipelines),
        Route("/pipelines/{name:str}", pages.pipeline),
        Route("/workflows/{workflow_id:int}", pages.workflow),
        Route("/queues/{action:str}", pages.queue_action, methods=["POST"]),
        Route("/api/overview", api.overview),
        Route("/api/jobs", api.jobs),
        Route("/api/jobs/{job_id:int}", api.job),
        Route("/api/long", api.long_jobs),
        Route("/api/dead", api.dead),
        Route("/health", api.health_full),
        Route("/health/ready", api.health_ready),
        Route("/health/live", api.health_live),
        Route("/metrics", api.metrics),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    def refusal(request: Request, status: int, reason: str) -> Response:
        if request.url.path.removeprefix(request.scope.get("root_path", "")).startswith("/api/"):
            return JSONResponse({"error": reason}, status_code=status)
        return d.view.error(request, status, reason)

    async def database_down(request: Request, exc: Exception) -> Response:
        return refusal(request, 503, f"the database did not answer: {exc}")

    async def schema_missing(request: Request, exc: Exception) -> Response:
        return refusal(request, 503, str(exc))

    async def grant_missing(request: Request, exc: Exception) -> Response:
        return refusal(request, 403, str(exc))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return refusal(request, 400, str(exc))

    hosts = allowed_hosts_from_env() if allowed_hosts is None else list(allowed_hosts)
    middleware = [Middleware(SecurityHeaders), Middleware(HostAllowList, hosts=hosts)]
    if creds:
        middleware.append(Middleware(BasicAuth, credentials=creds, throttle=login_throttle))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            DatabaseDown: database_down,
            SchemaMissing: schema_missing,
            GrantMissing: grant_missing,
            BadRequest: bad_request,
        },
    )
    app.state.dashboard = d
    return app
