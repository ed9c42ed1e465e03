"""`POST /v1/jobs/{id}/retry`: resume a failed or incomplete job from the shards it wrote.

A job that failed (a full disk, an endpoint down for longer than its retries) keeps its
checkpoints; posting a new job to the same `out` would be refused, so this queues the same job
again and its worker resumes where the shards end: the records already written are kept and
the job still ends with exactly n. API keys are dropped from the store when a job ends, so a
job that used them is given them again in the body.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.concurrency import run_in_threadpool

from synthgen.policy import bad_text
from synthgen.service.api.jobs import NOT_FOUND, JobId, get_job, invalid, store_of
from synthgen.service.api.schemas import JobOut, job_out
from synthgen.service.store.jobs import RETRYABLE
from synthgen.service.worker import secret_spec_json
from synthgen.spec import JobSpec

router = APIRouter(tags=["jobs"])
MASKED = "**********"


class RoleSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = None


class RetryIn(BaseModel):
    """What a retry may change: secrets given anew, a larger input budget, failed records retried."""

    model_config = ConfigDict(extra="forbid")

    roles: dict[str, RoleSecret] = Field(default_factory=dict, description="API keys again, by role entry")
    publish_token: SecretStr | None = Field(None, description="the Hub token again, when the job publishes")
    max_inputs: int | None = Field(None, ge=1, description="a larger input budget (an incomplete job)")
    retry_failed: bool = Field(False, description="also try again the records that failed before")


@router.post("/jobs/{job_id}/retry", response_model=JobOut, responses={
    **NOT_FOUND, 409: {"description": "the job is not failed or incomplete, or another job writes to its out"},
    422: {"description": "a secret the job needs was not given again, or the body is invalid"}})
async def retry_job(request: Request, job_id: JobId,
                    body: Annotated[RetryIn | None, Body()] = None) -> JobOut:
    """Queue a failed or incomplete job again; a worker resumes it from its checkpoints."""
    body = body or RetryIn()
    job = await run_in_threadpool(get_job, request, job_id)
    if job.status not in RETRYABLE:
        raise HTTPException(409, f"only a failed or incomplete job can be retried; this one is {job.status}")
    secrets = [s.api_key.get_secret_value() for s in body.roles.values() if s.api_key]
    if body.publish_token:
        secrets.append(body.publish_token.get_secret_value())
    if any(bad_text(s) for s in secrets):
        raise invalid(["body"], "text must be valid Unicode (a lone surrogate such as \\ud800 is not)", "unicode")
    store = store_of(request)
    raw = await run_in_threadpool(store.secret_spec, job_id)
    if raw is None:
        raise HTTPException(409, "this job has no stored spec to run again")
    spec = JobSpec.model_validate_json(raw)
    spec = _with_secrets(spec, job.spec, body)
    update: dict[str, Any] = {"retry_failed": body.retry_failed or spec.retry_failed}
    if body.max_inputs is not None:
        if body.max_inputs < spec.n:
            raise invalid(["body", "max_inputs"], "max_inputs must be at least n")
        update["max_inputs"] = body.max_inputs
    spec = spec.model_copy(update=update)
    if not await run_in_threadpool(store.retry, job_id, secret_spec_json(spec)):
        now = await run_in_threadpool(get_job, request, job_id)
        if now.status in RETRYABLE:
            raise HTTPException(409, "another queued or running job writes to this job's out folder")
        raise HTTPException(409, f"only a failed or incomplete job can be retried; this one is {now.status}")
    return job_out(await run_in_threadpool(get_job, request, job_id), request.app.state.root_prefix)


def _with_secrets(spec: JobSpec, public: dict[str, Any], body: RetryIn) -> JobSpec:
    """Put back the keys the job was submitted with (masked in its public spec) from the body."""
    unknown = sorted(set(body.roles) - set(spec.roles))
    if unknown:
        raise invalid(["body", "roles"], f"the job has no role entries {unknown}")
    roles = dict(spec.roles)
    for name, cfg in (public.get("roles") or {}).items():
        given = body.roles.get(name)
        if given is not None and given.api_key is not None:
            roles[name] = roles[name].model_copy(update={"api_key": given.api_key})
        elif isinstance(cfg, dict) and cfg.get("api_key") == MASKED and roles[name].api_key is None:
            raise invalid(["body", "roles", name, "api_key"], "this job's API key was dropped from the store when "
                          "it ended; send it again to retry", "secret_required")
    publish = spec.publish
    if publish is not None:
        if body.publish_token is not None:
            publish = publish.model_copy(update={"token": body.publish_token})
        elif (public.get("publish") or {}).get("token") == MASKED and publish.token is None:
            raise invalid(["body", "publish_token"], "this job's Hub token was dropped from the store when it "
                          "ended; send it again to retry", "secret_required")
    return spec.model_copy(update={"roles": roles, "publish": publish})
