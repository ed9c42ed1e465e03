"""`/v1/trainings`: start a LLaVA training run as its own process, follow it, cancel it.

The trainer (`synthgen.trainer.launch`) is imported inside the handlers, so the API starts
without the training extras (torch, transformers) installed; the endpoints then answer 501.
Paths in a config are confined to the data root like job outputs: the API must not become
a way to read or write arbitrary files on the server.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from synthgen.policy import CODE_KEYS, Policy, bad_text
from synthgen.service.api.jobs import clean_errors, invalid, scrub_errors, store_of
from synthgen.service.scrub import scrub_log, scrub_text
from synthgen.service.store import trainings as store_trainings

router = APIRouter(tags=["trainings"])
TrainingId = Annotated[str, PathParam(min_length=1, max_length=64)]
EXAMPLE = {"summary": "two-stage LLaVA on a synthgen dataset", "value": {
    "model": {"vision": "google/siglip-so400m-patch14-384", "lm": "llm-jp/llm-jp-3-1.8b"},
    "data": {"sources": [{"path": "jobs/<job id>"}]},
    "output_dir": "models/llava-jp-demo"}}


class TrainingOut(BaseModel):
    id: str
    state: Literal["starting", "running", "succeeded", "failed", "cancelled"]
    stage: str | None = None
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    output_dir: str | None = Field(None, description="relative to the data root")
    log_tail: str = ""
    error: str | None = None
    created_at: datetime
    config: dict[str, Any]


class TrainingPage(BaseModel):
    items: list[TrainingOut]
    total: int
    limit: int
    offset: int


def _launch() -> Any:
    try:
        from synthgen.trainer import launch
    except ImportError as exc:
        raise HTTPException(501, f"training is not available on this server: {exc}") from None
    return launch


_LOCAL = re.compile(r"^(/|\./|\.\./|~)")


def _confine(value: str, root: Path, loc: list[str | int], *, output: bool, policy: Policy | None = None,
             model: bool = False) -> str:
    """An output path always lands under the root; an input path does if it is local
    (absolute, ./, or existing under the root, or under an operator's input root); anything
    else is a Hub id, which for a model needs the operator's consent to download."""
    if "\x00" in value or ".." in PurePosixPath(value).parts:
        raise invalid(loc, "path must not contain '..'", "path_escape")
    if value.startswith("~") or "://" in value:
        raise invalid(loc, "path must be under the data root", "path_escape")
    candidate = Path(value) if value.startswith("/") else root / value
    if not output and not _LOCAL.match(value) and not candidate.exists():
        if model and not (policy is not None and policy.allow_model_downloads):  # no policy given: refuse
            raise invalid(loc, "model downloads are off on this server (SYNTHGEN_ALLOW_MODEL_DOWNLOADS); "
                          "name a model folder under the data root", "model_download_not_allowed")
        return value  # a Hub id such as org/name
    resolved = candidate.resolve()
    allowed = resolved != root and (resolved.is_relative_to(root) or (
        not output and policy is not None and policy.inside(resolved)))
    if not allowed:
        raise invalid(loc, "path must be inside the data root", "path_escape")
    return str(resolved)


ATTN_IMPLEMENTATIONS = {"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"}


def refuse_code_knobs(config: dict[str, Any]) -> None:
    """Whatever makes the trainer load or run code (trust_remote_code, Hub kernels named as an
    attention implementation) is a server setting: a REST config may not turn it on."""
    def walk(value: Any, loc: list[str | int]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in CODE_KEYS and v not in (None, False):
                    raise invalid([*loc, k], f"{k} loads code: it is a server setting, not a REST field",
                                  "server_setting")
                walk(v, [*loc, k])
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, [*loc, i])

    walk(config, ["body"])
    model = config.get("model")
    attn = model.get("attn_implementation") if isinstance(model, dict) else None
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS:
        raise invalid(["body", "model", "attn_implementation"], "attn_implementation must be one of "
                      f"{', '.join(sorted(ATTN_IMPLEMENTATIONS))} (Hub kernels load code)", "server_setting")


def confine_config(config: dict[str, Any], root: Path, run_dir: Path, policy: Policy | None = None) -> dict[str, Any]:
    if bad_text(config):
        raise invalid(["body"], "text must be valid Unicode (a lone surrogate such as \\ud800 is not)", "unicode")
    refuse_code_knobs(config)
    cfg = {**config, "run_dir": str(run_dir)}
    if not isinstance(cfg.get("output_dir"), str):
        raise invalid(["body", "output_dir"], "output_dir is required (a folder under the data root)")
    cfg["output_dir"] = _confine(cfg["output_dir"], root, ["body", "output_dir"], output=True)
    if isinstance(cfg.get("feature_cache_dir"), str):
        cfg["feature_cache_dir"] = _confine(cfg["feature_cache_dir"], root, ["body", "feature_cache_dir"], output=True)
    if isinstance(cfg.get("deepspeed"), str) and cfg["deepspeed"] not in ("zero2", "zero3"):
        cfg["deepspeed"] = _confine(cfg["deepspeed"], root, ["body", "deepspeed"], output=False)
    model = cfg.get("model")
    if isinstance(model, dict):
        cfg["model"] = model = dict(model)
        for key in ("vision", "lm", "init_from"):
            if isinstance(model.get(key), str):
                model[key] = _confine(model[key], root, ["body", "model", key], output=False, policy=policy,
                                      model=True)
    data = cfg.get("data")
    if isinstance(data, dict) and isinstance(data.get("sources"), list):
        cfg["data"] = data = {**data, "sources": [dict(s) if isinstance(s, dict) else s for s in data["sources"]]}
        for i, src in enumerate(data["sources"]):
            if not isinstance(src, dict):
                continue
            for key in ("path", "image_root"):
                if isinstance(src.get(key), str):
                    src[key] = _confine(src[key], root, ["body", "data", "sources", i, key], output=False,
                                        policy=policy)
    if isinstance(cfg.get("stages"), list):  # a stage's own sources are confined like data.sources
        cfg["stages"] = [dict(s) if isinstance(s, dict) else s for s in cfg["stages"]]
        for si, stage in enumerate(cfg["stages"]):
            if not (isinstance(stage, dict) and isinstance(stage.get("sources"), list)):
                continue
            stage["sources"] = [dict(s) if isinstance(s, dict) else s for s in stage["sources"]]
            for i, src in enumerate(stage["sources"]):
                for key in ("path", "image_root"):
                    if isinstance(src, dict) and isinstance(src.get(key), str):
                        src[key] = _confine(src[key], root, ["body", "stages", si, "sources", i, key],
                                            output=False, policy=policy)
    ev = cfg.get("eval")
    options = ev.get("options") if isinstance(ev, dict) else None
    if isinstance(options, dict):  # sources, a judge or model endpoint, cache_dir: paths and URLs not checked here
        extra = sorted(set(options) - {"generation", "label"})
        if extra:
            raise invalid(["body", "eval", "options"], f"eval.options {extra} are for local runs; over REST chain "
                          "POST /v1/evaluations with after_training (policy-checked)", "server_setting")
    hub = cfg.get("push_to_hub")
    if isinstance(hub, dict) and isinstance(hub.get("token_env"), str) and not re.match(
            r"^(HF_|HUGGING_FACE_)[A-Z0-9_]*$", hub["token_env"]):
        raise invalid(["body", "push_to_hub", "token_env"], "token_env must name an HF_* variable")
    return cfg


def _relative(path: str | None, root: Path) -> str | None:
    if not path:
        return path
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _out(row: dict[str, Any], st: dict[str, Any] | None, root: Path) -> TrainingOut:
    st = st or {}
    error = st.get("error") or row.get("error")
    return TrainingOut(
        id=row["id"], state=st.get("state", row["status"]), stage=st.get("stage"), step=st.get("step") or 0,
        total_steps=st.get("total_steps"), loss=st.get("loss"), output_dir=_relative(st.get("output_dir"), root),
        log_tail=scrub_log(st.get("log_tail") or "", [root]),
        error=scrub_text(error, (), [root]) if error else None,
        created_at=datetime.fromtimestamp(row["created_at"], UTC), config=row["config"])


def _refresh(request: Request, row: dict[str, Any]) -> TrainingOut:
    root = request.app.state.root
    st = _launch().status(Path(row["run_dir"]))
    if st.get("state") and st["state"] != row["status"]:
        store_trainings.set_state(store_of(request), row["id"], status=st["state"])
    return _out(row, st, root)


@router.post("/trainings", status_code=201, response_model=TrainingOut, responses={
    422: {"description": "invalid training config, or a path outside the data root"},
    501: {"description": "the training extras are not installed"}})
def start_training(request: Request, config: Annotated[dict[str, Any], Body(openapi_examples={"llava": EXAMPLE})]
                   ) -> TrainingOut:
    """Validate a training config (the trainer's YAML as JSON) and start it as its own process.
    Paths are relative to the data root (a finished job's dataset is `jobs/<job id>`)."""
    launch = _launch()
    root: Path = request.app.state.root
    training_id = store_trainings.new_job_id()
    run_dir = root / "trainings" / training_id
    cfg = confine_config(config, root, run_dir, request.app.state.policy)
    try:
        launch.validate_config(cfg)
    except ValidationError as exc:
        raise HTTPException(422, detail=scrub_errors(clean_errors(exc.errors(), ["body"]), request)) from None
    store = store_of(request)
    row = store_trainings.create(store, config=config, run_dir=str(run_dir), training_id=training_id)
    try:
        pid = launch.start(cfg, run_dir)
    except Exception as exc:
        error = scrub_text(f"{type(exc).__name__}: {exc}", (), [root])
        store_trainings.set_state(store, training_id, status="failed", error=error)
        raise HTTPException(500, f"could not start the trainer: {error}") from None
    store_trainings.set_state(store, training_id, status="running", pid=pid)
    row.update(status="running", pid=pid)
    return _refresh(request, row)


@router.get("/trainings", response_model=TrainingPage)
def list_trainings(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                   offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> TrainingPage:
    rows, total = store_trainings.list_page(store_of(request), limit, offset)
    root = request.app.state.root
    return TrainingPage(items=[_out(r, None, root) for r in rows], total=total, limit=limit, offset=offset)


def _row(request: Request, training_id: str) -> dict[str, Any]:
    row = store_trainings.get(store_of(request), training_id)
    if row is None:
        raise HTTPException(404, f"no training {training_id!r}")
    return row


@router.get("/trainings/{training_id}", response_model=TrainingOut, responses={404: {"description": "no such run"}})
def read_training(request: Request, training_id: TrainingId) -> TrainingOut:
    """State (running/succeeded/failed/cancelled), stage, step, loss and the log's last lines."""
    return _refresh(request, _row(request, training_id))


@router.post("/trainings/{training_id}/cancel", response_model=TrainingOut,
             responses={404: {"description": "no such run"}})
async def cancel_training(request: Request, training_id: TrainingId) -> TrainingOut:
    """Ask the trainer to stop: it checkpoints at the next step and exits as `cancelled`."""
    row = await run_in_threadpool(_row, request, training_id)
    await run_in_threadpool(_launch().cancel, Path(row["run_dir"]))
    return await run_in_threadpool(_refresh, request, row)
