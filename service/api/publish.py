"""`POST /v1/jobs/{id}/publish`: publish a finished job's data (again), to a Hub repo or a folder.

The publish runs in the background (a large push takes a while); `GET /v1/jobs/{id}` shows its
step (`chain`), and the job's webhooks get `publish.succeeded` / `publish.failed`. A push that
failed part-way is resumed by calling this again: files already in the repo are not re-sent.
A token in the body is used for this push only and never stored.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, Field

from synthgen.service import chain
from synthgen.service.api.jobs import JobId, get_job, invalid, store_of
from synthgen.spec import JobSpec, PublishSpec

router = APIRouter(tags=["jobs"])
PUBLISHABLE = ("succeeded", "incomplete")
EXAMPLES: dict[str, Any] = {
    "hub": {"summary": "a private Hub dataset (HF_ENDPOINT, HF_TOKEN on the server)",
            "value": {"repo_id": "my-org/ja-vqa", "license": "cc-by-4.0"}},
    "local": {"summary": "a folder under the data root that load_dataset opens",
              "value": {"local_dir": "published/ja-vqa"}},
}


class PublishAccepted(BaseModel):
    job_id: str
    chain: list[dict[str, Any]] = Field(description="the job's steps; the publish one is pending or running")


@router.post("/jobs/{job_id}/publish", status_code=202, response_model=PublishAccepted, responses={
    404: {"description": "no such job"}, 409: {"description": "the job has no finished data, or a publish runs"},
    422: {"description": "invalid publish spec, or local_dir outside the data root"}})
def publish_job(request: Request, job_id: JobId,
                body: Annotated[PublishSpec, Body(openapi_examples=EXAMPLES)]) -> PublishAccepted:
    """Publish the job's finished dataset with a dataset card (see docs/publishing.md)."""
    job = get_job(request, job_id)
    if job.status not in PUBLISHABLE:
        raise HTTPException(409, f"job is {job.status}: only a finished job's data can be published")
    settings = request.app.state.settings
    root: Path = settings.data_root
    if body.local_dir:
        try:
            chain.local_target(root, body.local_dir)
        except chain.LocalDirEscape as exc:
            raise invalid(["body", "local_dir"], str(exc), "path_escape") from None
    stored = store_of(request).secret_spec(job_id) if hasattr(store_of(request), "secret_spec") else None
    try:
        spec = JobSpec.model_validate_json(stored) if stored else JobSpec(generator=job.generator)
    except ValueError:
        spec = JobSpec(generator=job.generator)
    spec = spec.model_copy(update={"publish": body})
    if not chain.begin_publish(root, job_id):
        raise HTTPException(409, "a publish of this job is running")
    threading.Thread(target=chain.run_publish, args=(root, job_id, spec, Path(job.out_dir), settings),
                     name=f"publish-{job_id}", daemon=True).start()
    return PublishAccepted(job_id=job_id, chain=chain.read_steps(root, job_id) or [])
