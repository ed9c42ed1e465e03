"""Response models: what the API promises, documented in the OpenAPI schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from synthgen.engine.snapshot import RunSnapshot, Usage
from synthgen.service.store.jobs import JobRow as Job
from synthgen.spec import JobState


class Progress(BaseModel):
    target: int
    records: int = Field(0, description="records written (counting those from earlier attempts)")
    failed: int = Field(0, description="records dropped (see failures_by_reason)")
    rows: int = 0
    in_flight: int = 0
    requests: int = 0
    tokens: int = 0
    records_per_s: float = 0.0
    tokens_per_s: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    engine_state: str | None = None
    failures_by_reason: dict[str, int] = Field(default_factory=dict)
    usage: dict[str, Usage] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class JobOut(BaseModel):
    id: str
    generator: str
    status: JobState
    spec: dict[str, Any] = Field(description="the job spec as submitted, secrets masked")
    out: str = Field(description="output folder, relative to the data root")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(0, description="times a worker has claimed it (more than 1 after a re-queue)")
    cancel_requested: bool = False
    error: str | None = None
    progress: Progress
    chain: list[dict[str, Any]] | None = Field(
        None, description="steps after success (publish, train): name, state, error, result; on GET /v1/jobs/{id}")


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class RecordsPage(BaseModel):
    job_id: str
    total: int = Field(description="rows committed so far")
    offset: int
    limit: int
    items: list[dict[str, Any]] = Field(description="rows; images replaced by their URL")


class GeneratorOut(BaseModel):
    name: str
    version: str
    description: str
    roles: list[str]
    reads: str
    params_schema: dict[str, Any]


class WorkerHealth(BaseModel):
    expected: int = Field(description="worker processes `serve` keeps running")
    alive: int
    restarts: int = Field(description="workers restarted after they died, since serve started")


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: fewer workers alive than expected")
    database: Literal["ok"]
    version: str
    workers: WorkerHealth | None = Field(None, description="present when serve runs the workers")


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def progress_of(job: Job) -> Progress:
    snap = job.progress or RunSnapshot(target=job.n)
    running = job.status == "running"
    return Progress(
        target=job.n, records=job.records, failed=job.failed, rows=snap.rows,
        in_flight=snap.in_flight if running else 0, requests=snap.requests, tokens=job.tokens,
        records_per_s=snap.records_per_s, tokens_per_s=snap.tokens_per_s, elapsed_s=snap.elapsed_s,
        eta_s=snap.eta_s if running else None, engine_state=snap.state,
        failures_by_reason=snap.failures_by_reason, usage=snap.usage, notes=snap.notes,
    )


def job_out(job: Job, data_root_resolved: str) -> JobOut:
    out = job.out_dir
    if out.startswith(data_root_resolved):
        out = out[len(data_root_resolved):].lstrip("/") or "."
    return JobOut(
        id=job.id, generator=job.generator, status=job.status, spec=job.spec, out=out,  # type: ignore[arg-type]
        created_at=_ts(job.created_at), updated_at=_ts(job.updated_at),  # type: ignore[arg-type]
        started_at=_ts(job.started_at), finished_at=_ts(job.finished_at), attempts=job.attempts,
        cancel_requested=job.cancel_requested, error=job.error, progress=progress_of(job),
    )
