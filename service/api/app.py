"""The FastAPI app factory: store, routers, auth, request-size limit, latency metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synthgen import __version__
from synthgen.engine import plugin
from synthgen.policy import Policy
from synthgen.service.api import jobs, meta, retry, trainings
from synthgen.service.api.auth import require_api_key
from synthgen.service.api.hosts import HostCheck
from synthgen.service.store import JobStore
from synthgen.settings import Settings, get_settings

log = logging.getLogger("synthgen.api")
DESCRIPTION = """Submit synthetic-data generation jobs and watch them run.

A job body is the same spec the CLI builds from its flags and config file. Jobs are
stored durably and run by `synthgen worker` processes; progress, failures by reason and
a preview of the rows written so far are available while a job runs. When the server is
configured with `SYNTHGEN_API_KEYS`, every `/v1` call needs `Authorization: Bearer <key>`.
"""


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class LimitsAndTiming:
    """Pure ASGI (no BaseHTTPMiddleware overhead): caps body size, times each request."""

    def __init__(self, app: ASGIApp, max_bytes: int, latency: Any) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await JSONResponse({"detail": f"request body larger than {limit} bytes"}, 413)(
                        scope, receive, send)
                    self._observe(scope, 413, time.perf_counter())
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        status = 500
        start = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited, sending)
        finally:
            self._observe(scope, status, start)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        path = route_template(scope)
        self.latency.labels(scope.get("method", ""), path, str(status)).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """`/v1/jobs/{job_id}` rather than the raw path, so label values stay few.

    Rebuilt from the matched path parameters (plain ASGI scope keys), which holds across
    FastAPI versions that store the prefixed route template in different places.
    """
    if "route" not in scope and "endpoint" not in scope:
        return "unmatched"
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    parts = scope.get("path", "").split("/")
    return "/".join("{" + params[p] + "}" if p in params else p for p in parts)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape, minus the offending input (a role's api_key could be in it)."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, 422)


def create_app(settings: Settings | None = None, store: JobStore | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.data_root.mkdir(parents=True, exist_ok=True)
    store = store or JobStore.open(settings.resolved_database_url)
    app = FastAPI(title="synthgen", version=__version__, description=DESCRIPTION,
                  openapi_url="/v1/openapi.json", docs_url="/v1/docs", redoc_url=None)
    app.state.settings = settings
    app.state.store = store
    app.state.root = settings.data_root.resolve()
    app.state.root_prefix = str(app.state.root) + "/"
    app.state.api_keys = [k.get_secret_value().encode() for k in settings.api_keys]
    app.state.generators = plugin.available()
    app.state.policy = Policy.from_settings(settings)  # what REST jobs may read, call, download, run
    registry, latency = meta.make_registry(store)
    app.state.registry = registry
    guarded = [Depends(require_api_key)]
    common: dict[int | str, dict[str, Any]] = {
        400: {"description": "malformed request body (not JSON, or not UTF-8)"},
        401: {"description": "missing or invalid API key (when the server has keys configured)"},
        413: {"description": "request body larger than the configured limit"}}
    app.include_router(jobs.router, prefix="/v1", dependencies=guarded, responses=common)
    app.include_router(retry.router, prefix="/v1", dependencies=guarded, responses=common)
    app.include_router(meta.router, prefix="/v1", dependencies=guarded, responses=common)
    app.include_router(meta.open_router, prefix="/v1")
    app.add_api_route("/healthz", meta.healthz, include_in_schema=False)
    # Prometheus scrapes /metrics unless told otherwise; the same handler, behind the same key.
    app.add_api_route("/metrics", meta.metrics, include_in_schema=False, dependencies=guarded)
    _mount_dashboard(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(LimitsAndTiming, max_bytes=settings.max_request_bytes, latency=latency)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts, enabled=not settings.api_keys)
    app.include_router(trainings.router, prefix="/v1", dependencies=guarded, responses=common)
    from synthgen.service.api import evaluations  # evaluations: own processes, like trainings

    app.include_router(evaluations.router, prefix="/v1", dependencies=guarded, responses=common)
    from synthgen.service.api import publish  # POST /v1/jobs/{id}/publish (synthgen.publish)

    app.include_router(publish.router, prefix="/v1", dependencies=guarded, responses=common)
    return app


def _mount_dashboard(app: FastAPI) -> None:
    from synthgen.service import dashboard

    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")
    app.include_router(dashboard.router)
