"""The machine-readable routes: the pages' data as JSON under /api/, the health probes and
the Prometheus metrics.

The probes answer without credentials (security.OPEN_PATHS): /health/live says the process
answers, /health/ready that it can serve (the database answers with a current schema, its
pools are not swamped; failing jobs do not count, unbroken.ops.health), /health the full
report; not ready, or for /health unhealthy, is a 503.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from unbroken.dashboard.pages import overview_data, window_of
from unbroken.dashboard.params import MAX_ID, MAX_LIMIT, int_param, job_filter
from unbroken.ops import health
from unbroken.ops.format import jsonable

if TYPE_CHECKING:
    from unbroken.dashboard.app import Dashboard


class Api:
    """The JSON routes, probes and metrics of one dashboard."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    # --- the pages' data ----------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        window = window_of(request)
        data = await self.d.store(lambda s: overview_data(self.d, s, window))
        data["health"] = data["health"].as_dict()
        data.pop("chart")
        return JSONResponse(jsonable(data))

    async def jobs(self, request: Request) -> Response:
        flt = job_filter(request.query_params)
        before = int_param(request.query_params, "before", high=MAX_ID)
        limit = int_param(request.query_params, "limit", high=MAX_LIMIT) or 50
        rows, matching = await self.d.store(
            lambda s: s.job_page(flt, limit=limit, before_id=before)
        )
        data = {"filter": flt.describe(), "matching": matching.count}
        return JSONResponse(jsonable({**data, "searched": matching.searched(), "jobs": rows}))

    async def job(self, request: Request) -> Response:
        job_id: int = request.path_params["job_id"]
        job = await self.d.store(lambda s: s.job_get(job_id)) if job_id <= MAX_ID else None
        if job is None:
            return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
        data = jsonable(job)
        data["progress_view"] = jsonable(job.progress_view())
        return JSONResponse(data)

    async def long_jobs(self, request: Request) -> Response:
        rows = await self.d.store(lambda s: s.long_jobs())
        return JSONResponse(jsonable({"jobs": rows}))

    async def dead(self, request: Request) -> Response:
        rows = await self.d.store(lambda s: s.dead_letter_groups())
        return JSONResponse(jsonable({"groups": rows}))

    # --- probes and metrics -------------------------------------------------------------
    async def health_full(self, request: Request) -> Response:
        report = await self._report()
        healthy = report.ready and report.status != "unhealthy"
        return JSONResponse(report.as_dict(), status_code=200 if healthy else 503)

    async def health_ready(self, request: Request) -> Response:
        report = await self._report()
        return JSONResponse(
            {"ready": report.ready, "status": report.status},
            status_code=200 if report.ready else 503,
        )

    async def health_live(self, request: Request) -> Response:
        # The process answers: that is liveness. The database's state belongs to readiness.
        return JSONResponse({"live": True})

    async def _report(self) -> health.HealthReport:
        try:
            return await self.d.store(self.d.health)
        except Exception as exc:  # unreachable database, exhausted pool: not ready
            reason = health.Reason("database", "critical", f"{type(exc).__name__}: {exc}")
            return health.HealthReport(0, "unhealthy", [reason], live=False)

    async def metrics(self, request: Request) -> Response:
        await run_in_threadpool(self.d.database)
        body = await run_in_threadpool(generate_latest, self.d.metrics_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
