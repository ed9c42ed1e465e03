"""A model card (README.md) for a model folder the trainer wrote, so a pushed model says what it is.

`write_model_card(folder, config)` is the one call: the chain calls it when a chained training
succeeds, and the trainer's Hub upload can call it before pushing. Metadata (through
huggingface_hub's `ModelCard`/`ModelCardData`, merged into a card already in the folder):
`language: [ja]`, `base_model` (the vision tower and the LM, or the checkpoint continued from),
`datasets` (Hub ids among the sources), `pipeline_tag: image-text-to-text`, tags, and a
`model-index` with the evaluation scores when there are any. The body lists the base models,
the datasets with links, each stage's settings and data (from the trainer's
`training_data.json` when present) and the scores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).with_name("model_card.md.j2")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return dict(config)


def _flat_scores(scores: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of an evaluator result, keyed by their path ("jdocqa.accuracy")."""
    out: dict[str, float] = {}
    if isinstance(scores, dict):
        for k, v in scores.items():
            out.update(_flat_scores(v, f"{prefix}{k}."))
    elif isinstance(scores, int | float) and not isinstance(scores, bool):
        out[prefix.rstrip(".")] = float(scores)
    return out


def _dataset_link(name: str, endpoint: str) -> str | None:
    return f"{endpoint}/datasets/{name}" if HUB_ID.match(name) and not Path(name).exists() else None


def build_model_card(config: Any, *, existing: str | None = None, datasets_used: list[dict[str, Any]] | None = None,
                     scores: dict[str, Any] | None = None, stages_data: list[dict[str, Any]] | None = None,
                     model_name: str | None = None, endpoint: str = "https://huggingface.co") -> str:
    cfg = _config_dict(config)
    model = cfg.get("model") or {}
    base = [m for m in (model.get("init_from"),) if m] or [m for m in (model.get("vision"), model.get("lm")) if m]
    sources = [s.get("path") for s in (cfg.get("data") or {}).get("sources") or [] if isinstance(s, dict)]
    for stage in cfg.get("stages") or []:
        sources += [s.get("path") for s in stage.get("sources") or [] if isinstance(s, dict)]
    used = list(datasets_used or [])
    names = [d["name"] for d in used] + [s for s in sources if s and s not in {d["name"] for d in used}]
    datasets_list = [{"name": n, "link": next((d.get("url") for d in used if d["name"] == n), None)
                      or _dataset_link(n, endpoint)} for n in names]
    flat = _flat_scores(scores or {})
    name = model_name or Path(cfg.get("output_dir") or "model").name
    card = ModelCard(existing) if existing and existing.strip() else None
    data = card.data if card else ModelCardData()
    data.language = sorted(set((data.language if isinstance(data.language, list) else
                                [data.language] if data.language else []) + ["ja"]))
    data.library_name = data.library_name or "transformers"
    data.pipeline_tag = "image-text-to-text"
    hub_bases = [b for b in base if HUB_ID.match(b) and not Path(b).exists()]
    if hub_bases:
        data.base_model = hub_bases
    hub_datasets = [d["name"] for d in datasets_list if d["link"] and HUB_ID.match(d["name"])]
    if hub_datasets:
        data.datasets = hub_datasets
    data.tags = sorted(set((data.tags or []) + ["llava", "synthgen", "japanese", "vision-language"]))
    if flat:
        data.model_name = name
        data.eval_results = [EvalResult(task_type="image-text-to-text", dataset_type=key.split(".")[0],
                                        dataset_name=key.split(".")[0], metric_type=key.split(".", 1)[-1],
                                        metric_value=value) for key, value in sorted(flat.items())]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    body = env.get_template(TEMPLATE.name).render(
        name=name, base=base, model=model, datasets=datasets_list, stages=cfg.get("stages") or [],
        stages_data=stages_data or [], scores=flat, precision=cfg.get("precision"), seed=cfg.get("seed"))
    kept = card.text.strip() if card and card.text else ""  # the user's own words stay above ours
    text = f"---\n{data.to_yaml()}\n---\n" + (f"{kept}\n\n" if kept else "") + body
    ModelCard(text, ignore_metadata_errors=False)  # parses with huggingface_hub, or raises
    return text


def write_model_card(folder: str | Path, config: Any, *, datasets_used: list[dict[str, Any]] | None = None,
                     scores: dict[str, Any] | None = None) -> Path:
    """Write (or refresh) `folder/README.md` for the trained model in `folder`."""
    folder = Path(folder)
    stages_data: list[dict[str, Any]] = []
    data_file = folder / "training_data.json"
    if data_file.exists():
        try:
            stages_data = list(json.loads(data_file.read_text(encoding="utf-8")).get("stages") or [])
        except (ValueError, AttributeError):
            stages_data = []
    readme = folder / "README.md"
    existing = readme.read_text(encoding="utf-8") if readme.exists() else None
    if existing and "<!-- synthgen:model-card -->" in existing:
        existing = existing.split("<!-- synthgen:model-card -->", 1)[0]  # our old body: replaced, metadata kept
    text = build_model_card(config, existing=existing, datasets_used=datasets_used, scores=scores,
                            stages_data=stages_data)
    readme.write_text(text, encoding="utf-8")
    return readme
