"""The `eval:` section of a training config: hand the final model to synthgen's evaluator.

The evaluator is its own package area (synthgen.evaluator). Two entry points are accepted, in this
order: a function `synthgen.evaluator.run(model_dir, *, tasks, limit, output_dir, **options) -> dict`,
or the evaluator's spec and runner (`synthgen.evaluator.spec.EvalSpec`,
`synthgen.evaluator.runner.evaluate`), which this module drives: the model under test is the
trained folder (in-process), `tasks` (default: the evaluator's defaults) each limited to `limit`
samples, and `options` carries the rest of an evaluation spec (`judge`, `generation`, `label`,
`model` settings such as `{options: {device: cpu}}`) plus `sources: {task: local copy}`.
Where neither exists the run fails before training starts, with "evaluator not available",
rather than after hours of training; a spec that would not validate fails there too.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthgen.trainer.config import EvalConfig


def _unavailable(why: str) -> RuntimeError:
    return RuntimeError(f"evaluator not available: {why}; remove the eval: section or install synthgen's evaluator")


def evaluator_entry() -> Callable[..., Any]:
    try:
        module = importlib.import_module("synthgen.evaluator")
    except ImportError as exc:
        raise _unavailable(f"synthgen.evaluator cannot be imported ({exc})") from exc
    fn = getattr(module, "run", None)
    if callable(fn) and not isinstance(fn, type(importlib)):
        return fn
    try:
        from synthgen.evaluator.runner import evaluate
        from synthgen.evaluator.spec import EvalSpec
    except ImportError as exc:
        raise _unavailable(f"synthgen.evaluator has neither run() nor runner.evaluate ({exc})") from exc

    def run(model_dir: str, *, tasks: list[str], limit: int | None, output_dir: str, **options: Any) -> dict:
        spec = build_spec(EvalSpec, model_dir, tasks, limit, options)
        report = asyncio.run(evaluate(spec, output_dir))
        out = {}  # {task: {metric: value}}: the headline of each task, as the model card lists scores
        for name, task in report.get("tasks", {}).items():
            head = task.get("headline") or {}
            out[name] = {str(head.get("metric")): head.get("value")}
        return out

    return run


def build_spec(spec_cls, model_dir: str, tasks: list[str], limit: int | None, options: dict[str, Any]):
    data = {k: v for k, v in options.items() if k != "sources"}
    data["model"] = {**(data.get("model") or {}), "model": str(model_dir)}
    if not tasks:
        from synthgen.evaluator.spec import DEFAULT_TASKS

        tasks = list(DEFAULT_TASKS)
    sources = options.get("sources") or {}
    unknown = sorted(set(sources) - set(tasks))
    if unknown:
        raise ValueError(f"eval.options.sources names tasks not in eval.tasks: {unknown}")
    data["tasks"] = [{"name": t, **({"limit": limit} if limit else {}),
                      **({"source": str(sources[t])} if t in sources else {})} for t in tasks]
    return spec_cls.model_validate(data)


def check(cfg: EvalConfig, output_dir: str) -> None:
    """Before training: the evaluator exists and (when it is the spec-driven one) the spec validates."""
    entry = evaluator_entry()
    if getattr(entry, "__module__", "") != __name__:  # the evaluator's own run(): its options are its business
        return
    from synthgen.evaluator.spec import EvalSpec

    build_spec(EvalSpec, output_dir, list(cfg.tasks), cfg.limit, dict(cfg.options))


def run_eval(model_dir: Path, cfg: EvalConfig, output_dir: Path) -> Any:
    fn = evaluator_entry()
    output_dir.mkdir(parents=True, exist_ok=True)
    return fn(str(model_dir), tasks=list(cfg.tasks), limit=cfg.limit, output_dir=str(output_dir), **cfg.options)
