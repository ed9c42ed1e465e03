"""`/v1/generators`, `/v1/healthz`, `/v1/metrics` (also served at `/metrics`, Prometheus's default path)."""

from __future__ import annotations

from typing import get_args

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import text

from synthgen import __version__
from synthgen.engine import plugin
from synthgen.service.api.schemas import GeneratorOut, Health, WorkerHealth
from synthgen.service.store import JobStore
from synthgen.spec import JobState

router = APIRouter(tags=["service"])
open_router = APIRouter(tags=["service"])  # no API key: health checks and load balancers


@router.get("/generators", response_model=list[GeneratorOut])
def list_generators(request: Request) -> list[GeneratorOut]:
    """Installed generators, each with its params JSON schema and the model roles it uses."""
    gens = plugin.available()
    request.app.state.generators.update(gens)
    return [GeneratorOut(name=name, version=g.version, description=g.description, roles=list(g.roles),
                         reads=g.reads, params_schema=g.params_schema()) for name, g in gens.items()]


@open_router.get("/healthz", response_model=Health, responses={
    503: {"description": "database unreachable, or a worker is down (`status: degraded`)"}})
def healthz(request: Request, response: Response) -> Health:
    store: JobStore = request.app.state.store
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        raise HTTPException(503, "database unreachable") from None
    pool = getattr(request.app.state, "workers", None)  # set by `serve`, which supervises them
    if pool is None:
        return Health(status="ok", database="ok", version=__version__)
    workers = WorkerHealth(**pool.status())
    degraded = workers.alive < workers.expected
    if degraded:
        response.status_code = 503
    return Health(status="degraded" if degraded else "ok", database="ok", version=__version__, workers=workers)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by status, records, failures, tokens, request latency."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


class StoreCollector:
    """Reads the job table at scrape time, so every API replica reports the same totals."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self):  # type: ignore[no-untyped-def]
        counts = self.store.counts_by_status()
        jobs = GaugeMetricFamily("synthgen_jobs", "jobs by status", labels=["status"])
        for status in get_args(JobState):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        totals = self.store.totals()
        yield CounterMetricFamily("synthgen_records", "records written, all jobs", value=totals["records"])
        yield CounterMetricFamily("synthgen_record_failures", "records dropped, all jobs", value=totals["failed"])
        yield CounterMetricFamily("synthgen_tokens", "prompt + completion tokens, all jobs", value=totals["tokens"])


def make_registry(store: JobStore) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))  # type: ignore[arg-type]
    latency = Histogram("synthgen_http_request_duration_seconds", "API request latency",
                        ["method", "route", "status"], registry=registry,
                        buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
    return registry, latency
