"""Quality steps after a generation run: `apply_quality(run_dir, steps)`.

A job spec may list `quality: [...]`; when its run succeeds the worker (and `synthgen run`)
call this to curate the finished dataset into `<run>/quality/` (a dataset folder with its
own manifest and drops log) and draw the report charts into `<run>/quality/report/`. The run's
own dataset is left as it was, so curation can be redone with other settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

QUALITY_DIR = "quality"


def judge_role_config(steps: list[Any], roles: Mapping[str, Any] | None) -> Any:
    """The judge's RoleConfig: the step's own `role` over the spec's `judge` over `default`."""
    from synthgen.engine.roles import resolve_roles
    from synthgen.spec import DEFAULT_ROLE, RoleConfig

    roles = dict(roles or {})
    configured: dict[str, RoleConfig] = {}
    if DEFAULT_ROLE in roles:
        configured[DEFAULT_ROLE] = roles[DEFAULT_ROLE]
    judge = roles.get("judge") or RoleConfig()
    own = next((getattr(s, "role", None) for s in steps if getattr(s, "step", None) == "judge"), None)
    if own is not None:
        judge = own.merged_over(judge)
    configured["judge"] = judge
    return resolve_roles(configured, ("judge",))["judge"]


def resolve_against(steps: list[Any], data_root: Path | None) -> list[Any]:
    """Job-spec dedup `against` entries are relative to the data root (validated at the edge)."""
    if data_root is None:
        return steps
    out = []
    for s in steps:
        params = dict(getattr(s, "params", {}) or {})
        if getattr(s, "step", None) == "dedup" and params.get("against"):
            params["against"] = [str(data_root / p) for p in params["against"]]
            s = s.model_copy(update={"params": params})
        out.append(s)
    return out


def check_policy(steps: list[Any], judge_cfg: Any) -> None:
    """Under the server's operator policy (a worker), the judge's endpoint and the earlier
    datasets named by dedup must be allowed like any role's endpoint and any input path."""
    from synthgen import policy

    active = policy.current()
    if active is None:
        return
    if judge_cfg is not None:
        _, errors = policy.check_roles({"judge": judge_cfg}, active, ["quality", "judge", "role"])
        if errors:
            raise PermissionError("; ".join(str(e) for e in errors))
    for s in steps:
        for ref in (getattr(s, "params", None) or {}).get("against", []) if getattr(s, "step", None) == "dedup" else []:
            policy.check_readable(ref)


async def apply_quality_async(run_dir: str | Path, steps: list[Any], *, roles: Mapping[str, Any] | None = None,
                              data_root: Path | None = None, report: bool = True) -> dict[str, Any]:
    from synthgen.engine.roles import build_roles, close_roles
    from synthgen.quality.curate import curate_async

    run_dir = Path(run_dir)
    out = run_dir / QUALITY_DIR
    steps = resolve_against(list(steps), data_root)
    judge_cfg = judge_role_config(steps, roles) if any(getattr(s, "step", s) == "judge" for s in steps) else None
    check_policy(steps, judge_cfg)
    built: dict[str, Any] = {}
    if judge_cfg is not None:
        built = build_roles({"judge": judge_cfg})
    try:
        manifest = await curate_async(run_dir, out, steps, judge_role=built.get("judge"), overwrite=True)
    finally:
        await close_roles(built)
    if report:
        from synthgen.quality.report import write_report

        await asyncio.to_thread(write_report, out, out / "report")
    return manifest


def apply_quality(run_dir: str | Path, steps: list[Any], **kwargs: Any) -> dict[str, Any]:
    """Synchronous form (its own event loop): for threads and the CLI."""
    return asyncio.run(apply_quality_async(run_dir, steps, **kwargs))


async def run_for_job(store: Any, job_id: str, worker_id: str, out: Path, spec: Any, settings: Any,
                      progress: dict[str, Any]) -> str | None:
    """The worker's call after a job's run succeeded: curate in a thread while the job's lease
    is kept alive by heartbeats; returns an error message (the job then fails) or None.
    The manifest lands in `<out>/quality/manifest.json`, where the dashboard finds it."""
    import logging

    log = logging.getLogger("synthgen.quality")
    task = asyncio.create_task(asyncio.to_thread(
        apply_quality, out, spec.quality, roles=spec.roles, data_root=Path(settings.data_root)))
    beat = float(getattr(settings, "heartbeat_s", 5.0))
    while not task.done():
        await asyncio.wait({task}, timeout=beat)
        if not task.done():
            try:
                await asyncio.to_thread(store.heartbeat, job_id, worker_id, progress)
            except Exception:  # a missed beat is retried at the next interval
                log.exception("job %s: heartbeat during quality steps failed", job_id)
    try:
        manifest = task.result()
    except Exception as exc:  # the run's own dataset stays; only the curated copy is missing
        log.error("job %s: quality steps failed: %s", job_id, exc)
        return f"quality steps failed: {type(exc).__name__}: {str(exc)[:300]}"
    log.info("job %s: quality %d -> %d records, dropped %s", job_id, manifest["input_rows"],
             manifest["output_rows"], manifest["dropped"])
    return None


def quality_view(out_dir: str | Path) -> dict[str, Any] | None:
    """What the dashboard shows for a job's curation: drops by reason, steps, chart files."""
    import orjson

    folder = Path(out_dir) / QUALITY_DIR
    try:
        manifest = orjson.loads((folder / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    try:
        charts = orjson.loads((folder / "report" / "charts.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        charts = []
    return {"input_rows": manifest.get("input_rows", 0), "output_rows": manifest.get("output_rows", 0),
            "dropped": sorted((manifest.get("dropped") or {}).items(), key=lambda kv: -kv[1]),
            "by_step": manifest.get("by_step") or {}, "charts": charts}


def chart_path(out_dir: str | Path, name: str) -> Path | None:
    """A chart of the job's report, only by a name its charts.json lists (no path from the URL)."""
    view = quality_view(out_dir)
    if view is None or name not in {c.get("file") for c in view["charts"]}:
        return None
    path = Path(out_dir) / QUALITY_DIR / "report" / name
    return path if path.is_file() else None
