"""`/v1/evaluations`: run an evaluation as its own process, follow it, cancel it, read its report.

Like trainings: the evaluator (`synthgen.evaluator.launch`) spawns `python -m synthgen.evaluator`
for each evaluation, which reports through status.json in its folder under
`<data root>/evaluations/<id>/` and writes report.json / report.md / chart.png there. No job-store
table is needed: the folder is the record. Local paths in a spec (a checkpoint to load in-process,
a task's local copy) are confined to the data root; API keys go to the child's environment only
and are never written. `after_training` chains an evaluation onto a training run: it waits for
that run to succeed and then evaluates the model it saved.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from synthgen.engine.roles import resolve_roles
from synthgen.evaluator import launch
from synthgen.evaluator.spec import EvalSpec
from synthgen.evaluator.tasks import available as available_tasks
from synthgen.policy import HUB_DATASET, Policy, PolicyError, check_roles
from synthgen.service.api.jobs import invalid

router = APIRouter(tags=["evaluations"])
EvaluationId = Annotated[str, PathParam(pattern=r"^[a-f0-9]{16}$")]
FOLDER = "evaluations"


class EvaluationIn(EvalSpec):
    after_training: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                       description="a training id: wait for it to succeed, then evaluate its model")


class EvaluationOut(BaseModel):
    id: str
    state: Literal["waiting", "running", "succeeded", "failed", "cancelled"]
    label: str | None = None
    done: int = 0
    total: int | None = None
    task: str | None = None
    error: str | None = None
    created_at: datetime
    headline: dict[str, Any] = Field(default_factory=dict, description="task -> {metric, value} once finished")
    report: str | None = Field(None, description="URL of the JSON report once written")


class EvaluationPage(BaseModel):
    items: list[EvaluationOut]
    total: int


def _root(request: Request) -> Path:
    return request.app.state.root


def _source(value: str, policy: Policy, loc: list[str | int]) -> str:
    """A task's data: a local copy under the data root (or an allowed input root), or a Hub dataset id."""
    local = policy.local_input(value, loc)
    if local is not None:
        return str(local)
    if HUB_DATASET.match(value):
        return value
    raise PolicyError(loc, "not found under the data root, and not a Hub dataset id (owner/name)", "input_not_found")


def _training_model(request: Request, training_id: str) -> tuple[Path, str]:
    from synthgen.service.store import trainings as store_trainings

    row = store_trainings.get(request.app.state.store, training_id)
    if row is None:
        raise invalid(["body", "after_training"], f"no training {training_id!r}")
    out = (row.get("config") or {}).get("output_dir")
    if not isinstance(out, str):
        raise invalid(["body", "after_training"], "that training names no output_dir")
    root = _root(request)
    resolved = (Path(out) if out.startswith("/") else root / out).resolve()  # an output: always under the root
    if resolved == root or not resolved.is_relative_to(root):
        raise invalid(["body", "after_training"], "that training's output_dir is outside the data root", "path_escape")
    return Path(row["run_dir"]), str(resolved)


def _out(run_dir: Path) -> EvaluationOut:
    st = launch.status(run_dir)
    headline: dict[str, Any] = {}
    if st.get("has_report"):
        try:  # the small summary written beside the report, not the report with every sample
            headline = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["headline"]
        except (OSError, ValueError, KeyError):
            headline = {}
    state = st.get("state", "failed")
    if state not in ("waiting", "running", "succeeded", "failed", "cancelled"):
        state = "failed"
    return EvaluationOut(
        id=run_dir.name, state=state, label=st.get("label"), done=st.get("done") or 0, total=st.get("total"),
        task=st.get("task"), error=st.get("error"),
        created_at=datetime.fromtimestamp(float(st.get("created_at") or run_dir.stat().st_mtime), UTC),
        headline=headline, report=f"/v1/evaluations/{run_dir.name}/report" if st.get("has_report") else None)


def _run_dir(request: Request, evaluation_id: str) -> Path:
    run_dir = _root(request) / FOLDER / evaluation_id
    if not (run_dir / launch.SPEC_FILE).exists():
        raise HTTPException(404, f"no evaluation {evaluation_id!r}")
    return run_dir


def list_evaluations(root: Path, limit: int = 200) -> list[EvaluationOut]:
    folder = root / FOLDER
    if not folder.is_dir():
        return []
    items = [_out(d) for d in folder.iterdir() if (d / launch.SPEC_FILE).exists()]
    items.sort(key=lambda e: e.created_at, reverse=True)  # newest first
    return items[:limit]


@router.post("/evaluations", status_code=201, response_model=EvaluationOut, responses={
    422: {"description": "invalid evaluation spec, an unknown task, or a path outside the data root"}})
def start_evaluation(request: Request, body: EvaluationIn) -> EvaluationOut:
    """Start an evaluation (the same spec `synthgen eval --config` reads) as its own process."""
    root = _root(request)
    policy: Policy = request.app.state.policy
    known = available_tasks()
    for i, t in enumerate(body.tasks):
        if t.name not in known:
            raise invalid(["body", "tasks", i, "name"], f"unknown task {t.name!r}; have {sorted(known)}")
    spec = body.model_copy(deep=True)
    violations: list[PolicyError] = []
    for i, t in enumerate(spec.tasks):
        if t.source:
            try:
                t.source = _source(t.source, policy, ["body", "tasks", i, "source"])
            except PolicyError as exc:
                violations.append(exc)
    wait_dir = None
    if body.after_training:
        wait_dir, model_dir = _training_model(request, body.after_training)
        spec.model = spec.model.model_copy(update={"model": model_dir, "base_url": None, "engine": None})
    configured = {"model": spec.model, **({"judge": spec.judge} if spec.judge else {})}
    try:
        resolved = resolve_roles(configured, tuple(configured))
    except (ValueError, ValidationError) as exc:
        raise invalid(["body"], str(exc)) from None
    local_models, role_violations = check_roles(resolved, policy, None)
    for exc in role_violations:  # check_roles says body.roles.<role>; here the roles are body.model / body.judge
        if exc.loc[:2] == ["body", "roles"]:
            exc.loc = ["body", *exc.loc[2:]]
    violations += role_violations
    if violations:
        raise HTTPException(422, detail=[v.as_error() for v in violations])
    if "model" in local_models and not body.after_training:
        spec.model = spec.model.model_copy(update={"model": local_models["model"]})
    evaluation_id = secrets.token_hex(8)
    run_dir = root / FOLDER / evaluation_id
    spec = EvalSpec.model_validate({**spec.model_dump(exclude={"after_training"}),
                                    "model": spec.model, "judge": spec.judge,
                                    "cache_dir": str(root / FOLDER)})
    keys = {role: cfg.api_key.get_secret_value() for role, cfg in (("model", spec.model), ("judge", spec.judge))
            if cfg is not None and cfg.api_key is not None}
    try:
        launch.start(spec, run_dir, secrets=keys, wait_for=wait_dir)
    except Exception as exc:
        raise HTTPException(500, f"could not start the evaluation: {exc}") from None
    return _out(run_dir)


@router.get("/evaluations", response_model=EvaluationPage)
def get_evaluations(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> EvaluationPage:
    items = list_evaluations(_root(request), limit)
    return EvaluationPage(items=items, total=len(items))


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationOut, responses={404: {"description": "no such evaluation"}})
def read_evaluation(request: Request, evaluation_id: EvaluationId) -> EvaluationOut:
    """State, samples done of total, and each task's headline score once finished."""
    return _out(_run_dir(request, evaluation_id))


@router.post("/evaluations/{evaluation_id}/cancel", response_model=EvaluationOut,
             responses={404: {"description": "no such evaluation"}})
async def cancel_evaluation(request: Request, evaluation_id: EvaluationId) -> EvaluationOut:
    run_dir = await run_in_threadpool(_run_dir, request, evaluation_id)
    await run_in_threadpool(launch.cancel, run_dir)
    for _ in range(20):  # the process usually exits within a moment; say so when it has
        out = await run_in_threadpool(_out, run_dir)
        if out.state != "running":
            return out
        await asyncio.sleep(0.1)
    return await run_in_threadpool(_out, run_dir)


@router.get("/evaluations/{evaluation_id}/report", responses={
    200: {"content": {"application/json": {}, "text/markdown": {}, "image/png": {}},
          "description": "the report in the format asked for"},
    404: {"description": "no such evaluation, or no report yet"}})
def evaluation_report(request: Request, evaluation_id: EvaluationId,
                      fmt: Annotated[Literal["json", "md", "png"], Query(alias="format")] = "json") -> Any:
    """The report: JSON (every answer, score and judgement), Markdown (`?format=md`) or the chart (`?format=png`)."""
    run_dir = _run_dir(request, evaluation_id)
    name = {"json": "report.json", "md": "report.md", "png": "chart.png"}[fmt]
    path = run_dir / name
    if not path.exists():
        raise HTTPException(404, "the report is written when the evaluation finishes")
    if fmt == "md":
        return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")
    return FileResponse(path, media_type="application/json" if fmt == "json" else "image/png")
