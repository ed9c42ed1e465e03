"""The dataset card: YAML metadata the Hub indexes, and a body that says how the data was made.

A repo can hold several configs (one per generator, pushed by different runs), so a push
edits the card it finds rather than replacing it: the metadata goes through huggingface_hub's
`DatasetCard`/`DatasetCardData` and is merged (lists unioned, our config's entry replaced,
other configs' entries and any keys we do not manage kept), and the body keeps everything
outside this config's own section, which is marked by HTML comments. The body is rendered
from `dataset_card.md.j2`.

Licences: generated data inherits the obligations of what it was made from. A ShareAlike
source (CC-BY-SA) makes the dataset carry the same licence; a NonCommercial source makes it
NonCommercial; an explicit licence that contradicts a source's is refused rather than
published wrong. Every source is named with its licence and attribution in the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import DatasetCard, DatasetCardData

TEMPLATE = Path(__file__).with_name("dataset_card.md.j2")
SECTION = re.compile(r"<!-- synthgen:config (?P<name>[^ ]+) start -->.*?<!-- synthgen:config (?P=name) end -->\n?",
                     re.S)
TASKS_BY_GENERATOR = {
    "persona-qa": ["text-generation", "question-answering"],
    "caption-translate": ["image-to-text", "visual-question-answering"],
    "category-recaption": ["visual-question-answering", "image-to-text"],
    "html-render": ["visual-question-answering", "image-to-text"],
}
SIZE_BUCKETS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


class LicenseConflict(ValueError):
    """The requested licence would drop an obligation of a source's licence."""


@dataclass(frozen=True)
class SourceInfo:
    """Where inputs came from: a Hub dataset id or a description, its licence and attribution."""

    name: str
    license: str | None = None
    url: str | None = None
    attribution: str | None = None

    @property
    def hub_id(self) -> str | None:
        return self.name if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", self.name) else None


@dataclass
class CardInputs:
    repo_id: str
    config: str
    split: str
    rows: int
    manifest: dict[str, Any]
    license: str
    sources: list[SourceInfo] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # {"turns": [(role, text)], "image": path|None}
    task_categories: list[str] = field(default_factory=list)
    has_images: bool = False
    pretty_name: str | None = None
    data_path: str = ""  # the config's data_files glob, e.g. "caption-translate/train-*"


def size_category(rows: int) -> str:
    for bound, label in SIZE_BUCKETS:
        if rows < bound:
            return label
    return "n>1T" if rows >= 1_000_000_000_000 else "1B<n<10B"


def resolve_license(requested: str | None, sources: list[SourceInfo]) -> str:
    """The dataset's licence id: the requested one, or the one its sources impose."""
    licenses = [s.license.lower() for s in sources if s.license]
    share_alike = sorted({lic for lic in licenses if "-sa" in lic})
    non_commercial = any("-nc" in lic for lic in licenses)
    if len(share_alike) > 1:
        raise LicenseConflict(f"sources carry different ShareAlike licences {share_alike}: publish them separately")
    if share_alike:
        imposed = share_alike[0]
        if requested and requested.lower() != imposed:
            raise LicenseConflict(f"a source is {imposed} (ShareAlike): the dataset must be {imposed}, "
                                  f"not {requested}")
        return imposed
    if requested:
        if non_commercial and "-nc" not in requested.lower():
            raise LicenseConflict(f"a source is NonCommercial: {requested} would allow commercial use")
        return requested.lower()
    nc = sorted({lic for lic in licenses if "-nc" in lic})
    return nc[0] if nc else "other"


def task_categories_for(generator: str, has_images: bool) -> list[str]:
    if generator in TASKS_BY_GENERATOR:
        return TASKS_BY_GENERATOR[generator]
    return ["visual-question-answering", "image-to-text"] if has_images else ["text-generation"]


def _union(old: Any, new: list[str]) -> list[str]:
    out = [old] if isinstance(old, str) else list(old or [])
    return out + [v for v in new if v not in out]


def _when(epoch: Any) -> str | None:
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OSError):
        return None


def _body_context(inp: CardInputs) -> dict[str, Any]:
    m = inp.manifest
    gen = m.get("generator") or {}
    timings = m.get("timings") or {}
    usage = m.get("usage") or {}
    tokens = {role: {"model": u.get("model"), "requests": u.get("requests", 0),
                     "prompt_tokens": u.get("prompt_tokens", 0), "completion_tokens": u.get("completion_tokens", 0)}
              for role, u in usage.items()}
    models = {role: {"model": v.get("model"), "engine": v.get("engine"), "sampling": v.get("sampling") or {}}
              for role, v in (m.get("models") or {}).items()}
    started = timings.get("started_at")
    finished = float(started) + float(timings.get("elapsed_s") or 0) if started is not None else None
    return {
        "repo_id": inp.repo_id, "config": inp.config, "split": inp.split, "rows": inp.rows,
        "generator": gen.get("name", inp.config), "generator_version": gen.get("version"),
        "synthgen_version": m.get("synthgen_version"), "prompt_templates": m.get("prompt_templates") or {},
        "models": models, "tokens": tokens, "counts": m.get("counts") or {},
        "drops": dict(sorted((m.get("failures_by_reason") or {}).items(), key=lambda kv: -kv[1])),
        "started": _when(started), "finished": _when(finished),
        "published": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {k: ("<local path>" if isinstance(v, str) and v.startswith(("/", "~", "./", "../")) else v)
                   for k, v in (m.get("params") or {}).items() if isinstance(v, str | int | float | bool)},
        "license": inp.license, "sources": inp.sources, "samples": inp.samples, "has_images": inp.has_images,
        "state": m.get("state"), "notes": m.get("notes") or [],
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=False,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


def render_section(inp: CardInputs) -> str:
    text = _environment().get_template(TEMPLATE.name).render(**_body_context(inp))
    return f"<!-- synthgen:config {inp.config} start -->\n{text.strip()}\n<!-- synthgen:config {inp.config} end -->\n"


def merge_metadata(data: DatasetCardData, inp: CardInputs) -> DatasetCardData:
    data.language = _union(data.language, ["ja"])
    data.license = inp.license
    data.annotations_creators = _union(data.annotations_creators, ["machine-generated"])
    data.language_creators = _union(data.language_creators, ["machine-generated"])
    data.multilinguality = data.multilinguality or ["monolingual"]
    data.task_categories = _union(data.task_categories, inp.task_categories)
    data.source_datasets = _union(data.source_datasets, [f"extended|{s.hub_id}" for s in inp.sources if s.hub_id]
                                  or ["original"])
    if "original" in data.source_datasets and len(data.source_datasets) > 1:
        data.source_datasets = [s for s in data.source_datasets if s != "original"]
    data.size_categories = [size_category(_total_rows(data, inp))]
    data.pretty_name = data.pretty_name or inp.pretty_name or inp.repo_id.split("/")[-1]
    tags = _union(getattr(data, "tags", None), ["synthetic", "synthgen", "japanese"])
    data.tags = tags
    configs = [c for c in (getattr(data, "configs", None) or []) if c.get("config_name") != inp.config]
    configs.append({"config_name": inp.config, "data_files": [{"split": inp.split, "path": inp.data_path}]})
    data.configs = sorted(configs, key=lambda c: c["config_name"])
    counts = dict(getattr(data, "synthgen_rows", None) or {})
    counts[inp.config] = inp.rows
    data.synthgen_rows = counts
    return data


def _total_rows(data: DatasetCardData, inp: CardInputs) -> int:
    counts = dict(getattr(data, "synthgen_rows", None) or {})
    counts[inp.config] = inp.rows
    return sum(int(v) for v in counts.values())


def build_card(existing: str | None, inp: CardInputs) -> str:
    """The README.md text: `existing` (a card already in the repo, or None) with this config merged in."""
    card = DatasetCard(existing) if existing and existing.strip() else None
    data = merge_metadata(card.data if card else DatasetCardData(), inp)
    section = render_section(inp)
    if card is None:
        body = _environment().get_template("dataset_card_intro.md.j2").render(
            pretty_name=data.pretty_name, repo_id=inp.repo_id) + "\n" + section
    elif SECTION.search(card.text or "") and any(m.group("name") == inp.config for m in SECTION.finditer(card.text)):
        body = SECTION.sub(lambda m: section if m.group("name") == inp.config else m.group(0), card.text)
    else:
        body = (card.text or "").rstrip("\n") + "\n\n" + section
    text = f"---\n{data.to_yaml()}\n---\n{body}"
    validate_card(text)
    return text


def validate_card(text: str) -> DatasetCard:
    """Parse the card with huggingface_hub (the same parser the Hub client uses); raise ValueError
    on YAML it cannot read or on metadata a dataset card must have."""
    card = DatasetCard(text, ignore_metadata_errors=False)
    data = card.data.to_dict()
    problems = [key for key in ("language", "license", "task_categories", "size_categories",
                                "annotations_creators", "source_datasets", "configs") if not data.get(key)]
    if problems:
        raise ValueError(f"dataset card lacks {problems}")
    for cfg in data["configs"]:
        if not cfg.get("config_name") or not cfg.get("data_files"):
            raise ValueError(f"dataset card config entry {cfg!r} lacks config_name or data_files")
    return card

