"""What follows a job: publish, then train; and signed webhooks on job and step events.

A job spec may carry `publish` (a Hub repo or a local folder), `then.train` (a `synthgen
train` config) and `webhooks`. When the job succeeds the worker runs the steps in order:
the publish in its own thread of control (a large push takes a while; it is resumable, so a
failed one is retried by `POST /v1/jobs/{id}/publish`), then the training through the same
machinery as `POST /v1/trainings` (a row in the trainings table, its own process). A watcher
follows the training to its end, writes a model card into the model folder and sends the
`train.*` webhook; `GET /v1/jobs/{id}` shows every step's state, reading a running
training's state live from its run folder, so it stays right even if the worker goes away.

Step states live in `<data root>/chains/<job id>.json`, beside (never inside) the run folder.
A failed step records why and stops the steps after it (`skipped`); the job's data is never
touched by a step, so it stays as the job left it.

Webhooks: a JSON POST per event, `X-Synthgen-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`
with the timestamp in `X-Synthgen-Timestamp` (receivers reject old timestamps to stop
replays), retried with exponential back-off on connection errors, 408, 429 and 5xx
(honouring Retry-After). Targets must be allowed by the server's endpoint policy
(`SYNTHGEN_ALLOWED_ENDPOINTS`), checked when the job is submitted and again before sending.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from synthgen.policy import Policy
from synthgen.settings import Settings
from synthgen.spec import JobSpec, PublishSpec, WebhookSpec
from synthgen.trainer.launch import alive

log = logging.getLogger("synthgen.chain")
CHAINS = "chains"
FINAL = ("succeeded", "failed", "skipped", "cancelled")
WEBHOOK_ATTEMPTS = 6
WEBHOOK_FIRST_WAIT_S = 1.0
WEBHOOK_MAX_WAIT_S = 60.0
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
WATCH_GRACE_S = 60.0  # after the trainer ends, how long its watcher may take to finish the step


# -- validation at the edge ------------------------------------------------------------------
class LocalDirEscape(ValueError):
    pass


def local_target(root: Path, local_dir: str) -> Path:
    """A publish folder as an absolute path inside the data root (no '..', no symlink out)."""
    root = root.resolve()
    if "\x00" in local_dir or ".." in PurePosixPath(local_dir).parts:
        raise LocalDirEscape("local_dir must be a relative path under the data root without '..'")
    candidate = Path(local_dir)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise LocalDirEscape("local_dir must be inside the data root")
    return resolved


def chain_errors(spec: JobSpec, settings: Settings) -> list[dict[str, Any]]:
    """422 details for the parts of a REST spec this module runs (empty when all is well)."""
    errors: list[dict[str, Any]] = []
    policy = Policy.from_settings(settings)
    for i, hook in enumerate(spec.webhooks):
        if not policy.endpoint_allowed(hook.url):
            errors.append({"loc": ["body", "webhooks", i, "url"], "type": "endpoint_not_allowed",
                           "msg": "webhook host is not allowed on this server (SYNTHGEN_ALLOWED_ENDPOINTS)"})
    if spec.publish and spec.publish.local_dir:
        try:
            local_target(settings.data_root, spec.publish.local_dir)
        except LocalDirEscape as exc:
            errors.append({"loc": ["body", "publish", "local_dir"], "type": "path_escape", "msg": str(exc)})
    if spec.then and spec.then.train is not None:
        errors += _train_errors(spec.then.train, settings)
    return errors


def _train_errors(config: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    from fastapi import HTTPException
    from pydantic import ValidationError

    try:
        from synthgen.trainer import launch
    except ImportError as exc:
        return [{"loc": ["body", "then", "train"], "type": "unavailable",
                 "msg": f"training is not available on this server: {exc}"}]
    from synthgen.service.api.trainings import confine_config

    root = settings.data_root.resolve()
    try:
        cfg = confine_config(_with_sources(config, root / "jobs" / "placeholder"), root, root / "trainings" / "x")
        launch.validate_config(cfg)
    except HTTPException as exc:
        detail = exc.detail if isinstance(exc.detail, list) else [{"loc": ["body"], "msg": str(exc.detail)}]
        return [{**d, "loc": ["body", "then", "train", *list(d.get("loc", []))[1:]]} for d in detail]
    except ValidationError as exc:
        return [{"loc": ["body", "then", "train", *e.get("loc", ())], "msg": e.get("msg", ""),
                 "type": e.get("type", "value_error")} for e in exc.errors()]
    return []


def _training_data(root: Path, job_id: str, run_dir: Path) -> dict[str, Any]:
    """What a chained training reads: the published copy when it was published to a folder under
    the data root (its config and split, as a user of the data would load it), else the run."""
    published = next((s for s in _read(root, job_id) or [] if s["name"] == "publish" and s["state"] == "succeeded"),
                     None)
    result = (published or {}).get("result") or {}
    if result.get("local_dir"):
        return {"path": str(root.resolve() / result["local_dir"]), "config": result.get("config"),
                "split": result.get("split") or "train"}
    return {"path": str(run_dir)}


def _with_sources(config: dict[str, Any], data: Path | dict[str, Any]) -> dict[str, Any]:
    """The training config with this job's data as its source unless it names sources itself."""
    cfg = dict(config)
    block = dict(cfg.get("data") or {})
    if not block.get("sources"):
        block["sources"] = [data if isinstance(data, dict) else {"path": str(data)}]
    cfg["data"] = block
    return cfg


# -- step state ------------------------------------------------------------------------------
def chain_file(root: Path, job_id: str) -> Path:
    return Path(root) / CHAINS / f"{job_id}.json"


def planned(spec: JobSpec) -> list[str]:
    steps = ["publish"] if spec.publish else []
    if spec.then and spec.then.train is not None:
        steps.append("train")
    return steps


_lock = threading.Lock()


def _write(root: Path, job_id: str, steps: list[dict[str, Any]]) -> None:
    path = chain_file(root, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(steps, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _update(root: Path, job_id: str, name: str, **values: Any) -> list[dict[str, Any]]:
    with _lock:
        steps = _read(root, job_id) or []
        for step in steps:
            if step["name"] == name:
                step.update(values, updated_at=time.time())
        _write(root, job_id, steps)
        return steps


def _read(root: Path, job_id: str) -> list[dict[str, Any]] | None:
    try:
        return list(json.loads(chain_file(root, job_id).read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError):
        return None


def read_steps(root: Path, job_id: str) -> list[dict[str, Any]] | None:
    """The job's chain as the API shows it: a running training's state read live, a step whose
    worker died on this host marked failed (so it never shows `running` for ever)."""
    steps = _read(root, job_id)
    if steps is None:
        return None
    for step in steps:
        if step["state"] != "running":
            continue
        if step["name"] == "train" and step.get("run_dir"):
            try:
                from synthgen.trainer import launch

                st = launch.status(Path(step["run_dir"]))
            except ImportError:
                continue
            step["progress"] = {k: st.get(k) for k in ("stage", "step", "total_steps", "loss")}
            # The trainer is done but the watcher has not yet written the model card and sent
            # the webhook: still running, unless the watcher's worker is gone (no word for a while).
            from synthgen.trainer.progress import read_status

            ended = float(read_status(Path(step["run_dir"])).get("updated_at") or 0)
            finishing = st["state"] in FINAL and time.time() - ended < WATCH_GRACE_S
            step["state"] = st["state"] if st["state"] in FINAL and not finishing else "running"
            if st.get("error") and step["state"] == "failed":
                step["error"] = st["error"]
        elif step.get("host") == socket.gethostname() and step.get("pid") and not alive(int(step["pid"])):
            step["state"] = "failed"
            step["error"] = "the worker stopped during this step; POST /v1/jobs/{id}/publish to run it again"
    return [{k: v for k, v in s.items() if k not in ("pid", "host", "run_dir")} for s in steps]


# -- webhooks ---------------------------------------------------------------------------------
def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def deliver(hook: WebhookSpec, event: str, data: dict[str, Any], *, policy: Policy | None = None,
            attempts: int = WEBHOOK_ATTEMPTS, first_wait: float = WEBHOOK_FIRST_WAIT_S,
            max_wait: float = WEBHOOK_MAX_WAIT_S) -> bool:
    """POST one event to one hook, retried with back-off; True once a 2xx came back."""
    if policy is not None and not policy.endpoint_allowed(hook.url):
        log.warning("webhook %s: host not allowed by this server's policy; not sent", event)
        return False
    body = json.dumps({"event": event, "delivery": uuid.uuid4().hex, "created_at": time.time(), "data": data},
                      ensure_ascii=False).encode()
    for attempt in range(1, attempts + 1):
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "synthgen-webhook",
                   "X-Synthgen-Event": event, "X-Synthgen-Timestamp": timestamp}
        if hook.secret is not None:
            headers["X-Synthgen-Signature"] = sign(hook.secret.get_secret_value(), timestamp, body)
        retry_after: float | None = None
        try:
            r = httpx.post(hook.url, content=body, headers=headers, timeout=10.0, follow_redirects=False)
            if 200 <= r.status_code < 300:
                return True
            if r.status_code not in RETRY_STATUS:
                log.warning("webhook %s: HTTP %d, not retried", event, r.status_code)
                return False
            with contextlib.suppress(ValueError):
                retry_after = float(r.headers.get("Retry-After", ""))
            why = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            why = type(exc).__name__
        if attempt == attempts:
            log.warning("webhook %s: gave up after %d attempts (%s)", event, attempts, why)
            return False
        wait = min(max_wait, first_wait * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = min(max_wait, max(wait, retry_after))
        log.info("webhook %s: %s; retry in %.1fs", event, why, wait)
        time.sleep(wait)
    return False


def emit(spec: JobSpec, event: str, data: dict[str, Any], settings: Settings | None = None,
         *, wait: bool = False) -> threading.Thread | None:
    """Send `event` to every hook that asked for it, in a background thread."""
    hooks = [h for h in spec.webhooks if not h.events or event in h.events]
    if not hooks:
        return None
    policy = Policy.from_settings(settings) if settings is not None else None

    def send() -> None:
        for hook in hooks:
            deliver(hook, event, data, policy=policy)

    thread = threading.Thread(target=send, name=f"webhook-{event}", daemon=True)
    thread.start()
    if wait:
        thread.join()
    return thread


# -- the steps ---------------------------------------------------------------------------------
def _error(exc: BaseException, secrets: list[str]) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "**********")
    return text[:2000]


def begin_publish(root: Path, job_id: str) -> bool:
    """Mark a publish step pending for `POST /v1/jobs/{id}/publish`; False if one is running."""
    with _lock:
        steps = _read(root, job_id) or []
        current = next((s for s in (read_steps(root, job_id) or []) if s["name"] == "publish"), None)
        if current is not None and current["state"] == "running":
            return False
        if not any(s["name"] == "publish" for s in steps):
            steps.insert(0, {"name": "publish", "state": "pending"})
        for s in steps:
            if s["name"] == "publish":
                s.update(state="pending", error=None)
        _write(root, job_id, steps)
        return True


def publish_step(pub: PublishSpec, run_dir: Path, root: Path) -> dict[str, Any]:
    """Run a publish (synthgen.publish.run) with a local folder confined to the data root."""
    from synthgen.publish.run import publish_spec

    target = local_target(root, pub.local_dir) if pub.local_dir else None
    result = publish_spec(pub, run_dir, local_dir=target)
    if target is not None:
        result["local_dir"] = str(target.relative_to(root.resolve()))
    return result


def run_publish(root: Path, job_id: str, spec: JobSpec, run_dir: Path, settings: Settings | None = None,
                store: Any = None) -> bool:
    assert spec.publish is not None
    _update(root, job_id, "publish", state="running", started_at=time.time(), error=None,
            pid=os.getpid(), host=socket.gethostname())
    secrets = [spec.publish.token.get_secret_value()] if spec.publish.token else []
    try:
        result = publish_step(spec.publish, run_dir, root)
    except Exception as exc:
        error = _error(exc, secrets)
        log.warning("job %s: publish failed: %s", job_id, error)
        _update(root, job_id, "publish", state="failed", finished_at=time.time(), error=error)
        emit(spec, "publish.failed", {"job_id": job_id, "error": error}, settings)
        return False
    _update(root, job_id, "publish", state="succeeded", finished_at=time.time(), result=result)
    emit(spec, "publish.succeeded", {"job_id": job_id, **result}, settings)
    if store is not None and hasattr(store, "forget_secrets"):  # the Hub token is needed no longer
        with contextlib.suppress(Exception):
            store.forget_secrets(job_id)
    return True


def start_training(store: Any, root: Path, job_id: str, spec: JobSpec, run_dir: Path,
                   settings: Settings | None = None, *, poll_s: float = 1.0) -> threading.Thread | None:
    """Start the training like `POST /v1/trainings` does; a watcher thread follows it to its end."""
    from synthgen.service.store import trainings as store_trainings

    assert spec.then is not None and spec.then.train is not None
    _update(root, job_id, "train", state="running", started_at=time.time(), error=None)
    try:
        from synthgen.service.api.trainings import confine_config
        from synthgen.trainer import launch

        training_id = store_trainings.new_job_id()
        train_dir = root.resolve() / "trainings" / training_id
        config = _with_sources(spec.then.train, _training_data(root, job_id, run_dir))
        cfg = confine_config(config, root.resolve(), train_dir)
        store_trainings.create(store, config=config, run_dir=str(train_dir), training_id=training_id)
        pid = launch.start(cfg, train_dir)
        store_trainings.set_state(store, training_id, status="running", pid=pid)
    except Exception as exc:
        error = _error(exc, [])
        if hasattr(exc, "detail"):
            error = f"invalid training config: {exc.detail}"  # an HTTPException from confine_config
        _update(root, job_id, "train", state="failed", finished_at=time.time(), error=error)
        emit(spec, "train.failed", {"job_id": job_id, "error": error}, settings)
        return None
    result = {"training_id": training_id, "output_dir": str(Path(cfg["output_dir"]).relative_to(root.resolve()))}
    _update(root, job_id, "train", result=result, run_dir=str(train_dir))
    emit(spec, "train.started", {"job_id": job_id, **result}, settings)

    def watch() -> None:
        while True:
            st = launch.status(train_dir)
            if st["state"] in FINAL:
                break
            time.sleep(poll_s)
        state = st["state"]
        with contextlib.suppress(Exception):
            store_trainings.set_state(store, training_id, status=state, error=st.get("error"))
        extra: dict[str, Any] = {}
        if state == "succeeded":
            try:
                from synthgen.publish.model_card import write_model_card
                from synthgen.trainer.progress import read_status

                scores = read_status(train_dir).get("eval")
                if isinstance(scores, dict):
                    extra["result"] = {**result, "eval": scores}  # the trainer's `eval:` section ran
                write_model_card(Path(cfg["output_dir"]), cfg, datasets_used=_datasets_used(root, job_id),
                                 scores=scores if isinstance(scores, dict) else None)
            except Exception as exc:  # a card is a courtesy: the model is still there
                log.warning("job %s: model card not written: %s", job_id, exc)
        if st.get("error"):
            extra["error"] = str(st["error"])[:2000]
        _update(root, job_id, "train", state=state, finished_at=time.time(), **extra)
        emit(spec, f"train.{state}", {"job_id": job_id, **result, **extra}, settings)

    thread = threading.Thread(target=watch, name=f"train-watch-{job_id}", daemon=True)
    thread.start()
    return thread


def _datasets_used(root: Path, job_id: str) -> list[dict[str, Any]]:
    for step in _read(root, job_id) or []:
        if step["name"] == "publish" and step.get("state") == "succeeded":
            res = step.get("result") or {}
            if res.get("repo_id"):
                return [{"name": res["repo_id"], "config": res.get("config"), "url": res.get("url")}]
            if res.get("local_dir"):
                return [{"name": res["local_dir"], "config": res.get("config")}]
    return []


def after_job(store: Any, settings: Settings, job_id: str, spec_json: str, out_dir: str, final: str) -> list[str]:
    """The worker's hook once a job reached `final`: webhooks, then the chain if it succeeded.
    Returns the steps started (the training itself goes on in its own process)."""
    try:
        spec = JobSpec.model_validate_json(spec_json)
    except Exception:
        return []
    root = settings.data_root
    emit(spec, f"job.{final}", {"job_id": job_id, "status": final, "generator": spec.generator}, settings)
    steps = planned(spec)
    if final != "succeeded" or not steps:
        return []
    with _lock:
        _write(root, job_id, [{"name": s, "state": "pending"} for s in steps])
    run_dir = Path(out_dir)
    if spec.publish and not run_publish(root, job_id, spec, run_dir, settings, store):
        for later in steps[1:]:
            _update(root, job_id, later, state="skipped", error="an earlier step failed")
        return ["publish"]
    if "train" in steps:
        start_training(store, root, job_id, spec, run_dir, settings)
    return steps
