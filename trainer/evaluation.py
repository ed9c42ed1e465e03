"""The `eval:` section of a training config: hand the final model to synthgen's evaluator.

The evaluator is a separate package area (synthgen.evaluator). The contract this module relies on:
`synthgen.evaluator.run(model_dir, *, tasks, limit, output_dir, **options) -> dict` (the scores,
JSON-serialisable). Where that function is absent the run fails before training starts, with
"evaluator not available", rather than after hours of training.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthgen.trainer.config import EvalConfig


def evaluator_entry() -> Callable[..., Any]:
    try:
        module = importlib.import_module("synthgen.evaluator")
    except ImportError as exc:
        raise RuntimeError(f"evaluator not available: synthgen.evaluator cannot be imported ({exc})") from exc
    fn = getattr(module, "run", None)
    if not callable(fn) or isinstance(fn, type(importlib)):
        raise RuntimeError("evaluator not available: synthgen.evaluator exposes no run(model_dir, tasks=..., "
                           "limit=..., output_dir=...) function; remove the eval: section or install an evaluator")
    return fn


def run_eval(model_dir: Path, cfg: EvalConfig, output_dir: Path) -> Any:
    fn = evaluator_entry()
    output_dir.mkdir(parents=True, exist_ok=True)
    return fn(str(model_dir), tasks=list(cfg.tasks), limit=cfg.limit, output_dir=str(output_dir), **cfg.options)
