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


async def apply_quality_async(run_dir: str | Path, steps: list[Any], *, roles: Mapping[str, Any] | None = None,
                              data_root: Path | None = None, report: bool = True) -> dict[str, Any]:
    from synthgen.engine.roles import build_roles, close_roles
    from synthgen.quality.curate import curate_async

    run_dir = Path(run_dir)
    out = run_dir / QUALITY_DIR
    steps = resolve_against(list(steps), data_root)
    built: dict[str, Any] = {}
    if any(getattr(s, "step", s) == "judge" for s in steps):
        built = build_roles({"judge": judge_role_config(steps, roles)})
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
