"""`/v1/jobs`: submit, list, inspect, cancel, and preview the records of generation jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool

from synthgen.engine import plugin
from synthgen.engine.roles import resolve_roles, with_smoke_defaults
from synthgen.policy import Policy, bad_text, check_params, check_roles
from synthgen.service import chain
from synthgen.service.api import records
from synthgen.service.api.paths import PathEscape, confine
from synthgen.service.api.schemas import JobOut, JobPage, RecordsPage, job_out
from synthgen.service.store import JobStore
from synthgen.service.store.jobs import JobRow as Job
from synthgen.service.store.jobs import new_job_id
from synthgen.service.worker import secret_spec_json
from synthgen.spec import DEFAULT_ROLE, FINAL_JOB_STATES, JobSpec, JobState, RoleConfig

router = APIRouter(tags=["jobs"])
JobId = Annotated[str, PathParam(min_length=1, max_length=64, description="job id")]
EXAMPLES: dict[str, Any] = {
    "persona-qa": {"summary": "Japanese persona Q&A against one OpenAI-compatible server", "value": {
        "generator": "persona-qa", "n": 100, "params": {"turns": 2},
        "roles": {"default": {"base_url": "http://127.0.0.1:8001/v1", "model": "cyberagent/calm3-22b-chat",
                              "temperature": 0.7}}}},
    "per-role": {"summary": "a different model per role, a key for one endpoint", "value": {
        "generator": "persona-qa", "n": 1000, "out": "runs/persona-qa-1k",
        "roles": {"default": {"base_url": "http://127.0.0.1:8001/v1", "model": "cyberagent/calm3-22b-chat"},
                  "answerer": {"temperature": 0.2, "max_tokens": 1024, "api_key": "sk-..."}}}},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job"}}


def invalid(loc: list[str | int], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(422, detail=[{"loc": loc, "msg": msg, "type": kind}])


def clean_errors(errors: list[Any], prefix: list[str | int]) -> list[dict[str, Any]]:
    """Validation errors without the offending input (it may hold a secret)."""
    return [{"loc": [*prefix, *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "value_error")}
            for e in errors]


def store_of(request: Request) -> JobStore:
    return request.app.state.store


def find_generator(request: Request, name: str) -> plugin.Generator:
    gens: dict[str, plugin.Generator] = request.app.state.generators
    if name in gens:
        return gens[name]
    try:
        gen = plugin.get(name)
    except plugin.UnknownGenerator as exc:
        raise invalid(["body", "generator"], str(exc), "unknown_generator") from None
    gens[name] = gen
    return gen


def get_job(request: Request, job_id: str) -> Job:
    job = store_of(request).get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.post("/jobs", status_code=201, response_model=JobOut, responses={
    409: {"description": "another queued or running job writes to the same `out`"},
    413: {"description": "request body too large"},
    422: {"description": "invalid spec: unknown generator, bad params or roles, `out` outside the data root"}})
async def create_job(spec: Annotated[JobSpec, Body(openapi_examples=EXAMPLES)], request: Request,
                     response: Response) -> JobOut:
    """Queue a generation job. The body is the CLI's job spec: generator, params, roles
    (`default` applies to every role), n, out, publish. Params and roles are validated
    against the generator now, so a bad spec fails here rather than in a worker."""
    where = text_error(spec)
    if where is not None:
        raise invalid(where, "text must be valid Unicode (a lone surrogate such as \\ud800 is not)", "unicode")
    gen = find_generator(request, spec.generator)
    policy: Policy = request.app.state.policy
    params, violations = check_params(gen.params_model, spec.params, policy, ["body", "params"])
    if violations:
        raise HTTPException(422, detail=[v.as_error() for v in violations])
    try:
        if params == spec.params:  # no local path: validation is pure CPU, cheaper than a thread hop
            gen.parse_params(params)
        else:  # validators may look at the file system
            await run_in_threadpool(gen.parse_params, params)
    except ValidationError as exc:
        raise HTTPException(422, detail=scrub_errors(clean_errors(exc.errors(), ["body", "params"]),
                                                     request)) from None
    try:
        resolved = resolve_roles(spec.roles, gen.roles)
    except (ValueError, ValidationError) as exc:
        raise invalid(["body", "roles"], str(exc)) from None
    local_models, violations = check_roles(resolved, policy)
    for i, step in enumerate(spec.quality):  # a judge step's own model: the same rules as a role's
        if step.role is not None:
            try:
                judge = resolve_roles({DEFAULT_ROLE: spec.roles.get(DEFAULT_ROLE) or RoleConfig(), "judge": step.role},
                                      ("judge",))
            except (ValueError, ValidationError) as exc:
                raise invalid(["body", "quality", i, "role"], str(exc)) from None
            violations += check_roles(judge, policy, ["body", "quality", i, "role"])[1]
    if violations:
        raise HTTPException(422, detail=[v.as_error() for v in violations])
    if spec.executor == "ray" and not request.app.state.settings.ray_address:
        # Without a cluster the worker would start a Ray of its own: the operator decides that.
        raise invalid(["body", "executor"], "this server has no Ray cluster configured (SYNTHGEN_RAY_ADDRESS)",
                      "executor_not_available")
    spec = with_smoke_defaults(spec, resolved)
    chained = spec.publish or spec.then or spec.webhooks  # the steps after success (synthgen.service.chain)
    if chained and (errors := await run_in_threadpool(chain.chain_errors, spec, request.app.state.settings)):
        raise HTTPException(422, detail=errors)
    job_id = new_job_id()
    out = confine_out(request, spec.out, job_id)
    if spec.out:  # a folder of the user's choosing: check it on a thread (file system + a query)
        await run_in_threadpool(check_out_free, request, out)
    spec = spec.model_copy(update={"out": str(out), "resume": False})
    public = spec.public_dict()
    public["out"] = str(out.relative_to(request.app.state.root))
    # What the worker runs: input paths and local model folders made absolute under the roots.
    roles = dict(spec.roles)
    for role, folder in local_models.items():
        roles[role] = (roles.get(role) or RoleConfig()).model_copy(update={"model": folder})
    run_spec = spec.model_copy(update={"params": params, "roles": roles})
    pending = store_of(request).create_soon(job_id=job_id, generator=gen.name, public_spec=public,
                                            secret_spec_json=secret_spec_json(run_spec), out_dir=str(out),
                                            n=spec.n)
    job = await asyncio.wrap_future(pending)  # the insert is committed off the event loop, batched
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job, request.app.state.root_prefix)


def text_error(spec: JobSpec) -> list[str | int] | None:
    """Where the spec holds text that is not valid Unicode (secrets included), or None."""
    def walk(value: Any, loc: list[str | int]) -> list[str | int] | None:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return loc if bad_text(value) else None
        if isinstance(value, dict):
            for k, v in value.items():
                if bad_text(k):
                    return loc  # the key itself: never echo it
                found = walk(v, [*loc, k])
                if found is not None:
                    return found
        if isinstance(value, list | tuple):
            for i, v in enumerate(value):
                found = walk(v, [*loc, i])
                if found is not None:
                    return found
        return None

    return walk(spec.model_dump(mode="python"), ["body"])


def scrub_errors(errors: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    """Error messages with the absolute data root cut out (paths shown relative to it)."""
    return [{**e, "msg": relative_to_root(str(e.get("msg", "")), request.app.state.root)} for e in errors]


def relative_to_root(text: str, root: Path) -> str:
    return text.replace(str(root) + "/", "").replace(str(root), ".")


def confine_out(request: Request, out: str | None, job_id: str) -> Path:
    try:
        return confine(out, request.app.state.settings.data_root, job_id)
    except (PathEscape, OSError, ValueError) as exc:
        raise invalid(["body", "out"], str(exc), "path_escape") from None


def check_out_free(request: Request, out: Path) -> None:
    if store_of(request).out_in_use(str(out)):
        raise HTTPException(409, "another queued or running job writes to this out folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HTTPException(409, "out exists and is not empty; choose another folder")


@router.get("/jobs", response_model=JobPage)
def list_jobs(request: Request, status: JobState | None = None,
              generator: Annotated[str | None, Query(max_length=100)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> JobPage:
    """Jobs, newest first, optionally filtered by status and generator."""
    jobs, total = store_of(request).list(status=status, generator=generator, limit=limit, offset=offset)
    prefix = request.app.state.root_prefix
    return JobPage(items=[job_out(j, prefix) for j in jobs], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
async def read_job(request: Request, job_id: JobId) -> JobOut:
    """Status, progress counts, rates, tokens, failures by reason and ETA."""
    # The most polled call. A primary-key read from local SQLite (WAL: readers never wait for
    # the writer) costs less than the hop to a thread, so it runs inline; over a network
    # database it goes to the thread pool like everything else.
    if store_of(request).local:
        job = get_job(request, job_id)
    else:
        job = await run_in_threadpool(get_job, request, job_id)
    out = job_out(job, request.app.state.root_prefix)
    if job.spec.get("publish") or job.spec.get("then"):  # each chained step's state
        out.chain = chain.read_steps(request.app.state.settings.data_root, job.id)
    return out


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses={
    **NOT_FOUND, 409: {"description": "the job already finished"}})
def cancel_job(request: Request, job_id: JobId) -> JobOut:
    """A queued job is cancelled at once; a running one stops within a few seconds."""
    store = store_of(request)
    job = get_job(request, job_id)
    if job.status in FINAL_JOB_STATES and job.status != "cancelled":  # a second cancel is a no-op
        raise HTTPException(409, f"job already {job.status}")
    store.cancel(job_id)
    return job_out(get_job(request, job_id), request.app.state.root_prefix)


def image_url(job_id: str, index: int, k: int, base: str = "/v1") -> dict[str, str]:
    return {"image_url": f"{base}/jobs/{job_id}/records/{index}/images/{k}"}


def preview(job: Job, offset: int, limit: int, base: str = "/v1") -> RecordsPage:
    out = Path(job.out_dir)
    rows = records.read_rows(out, offset, limit)
    items = [records.swap_images(row, lambda k, i=offset + n: image_url(job.id, i, k, base))
             for n, row in enumerate(rows)]
    return RecordsPage(job_id=job.id, total=records.count_rows(out), offset=offset, limit=limit, items=items)


@router.get("/jobs/{job_id}/records", response_model=RecordsPage, responses=NOT_FOUND)
def list_records(request: Request, job_id: JobId, offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> RecordsPage:
    """Rows written so far (committed checkpoints, or the finished dataset's rows), in order.
    Images appear as `{"image_url": ...}`."""
    return preview(get_job(request, job_id), offset, limit)


@router.get("/jobs/{job_id}/records/{index}/images/{k}", responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the image"},
    **NOT_FOUND}, response_class=Response)
def record_image(request: Request, job_id: JobId, index: Annotated[int, PathParam(ge=0, le=2**31)],
                 k: Annotated[int, PathParam(ge=0, le=10_000)]) -> Response:
    """The k-th image of row `index`."""
    return image_response(get_job(request, job_id), index, k)


def image_response(job: Job, index: int, k: int) -> Response:
    found = records.image_bytes(Path(job.out_dir), index, k)
    if found is None:
        raise HTTPException(404, "no such image")
    data, mime = found
    return Response(data, media_type=mime, headers={"X-Content-Type-Options": "nosniff",
                                                    "Cache-Control": "private, max-age=3600"})
