"""Evaluation tasks: small registered values, like generators.

A task says where its data lives (a Hub dataset id, or a local copy in the same format), how
one row becomes a `Sample` (question, images, reference answer, metadata), and which scores
apply: Rouge-L, an LLM judge (Heron-Bench's paired 1-10 judgement, or a 1-5 answer judgement
as llm-jp-eval-mm's "LLM" columns), and task-specific exact matching. Built-in tasks are listed
in BUILTIN; other packages add theirs under the `synthgen.eval_tasks` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

JudgeKind = Literal["heron", "answer"]


@dataclass
class Sample:
    id: str
    question: str
    reference: str
    images: list[Any] = field(default_factory=list)  # PIL images or encoded bytes
    meta: dict[str, Any] = field(default_factory=dict)  # category, context, answer_type, ...


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    hub_id: str
    split: str
    # (source: a local folder / file or a Hub id, or None for hub_id) -> samples, in a stable order
    load: Callable[[str | None], Iterator[Sample]]
    rouge: bool = True
    judge: JudgeKind | None = "answer"
    # sample, answer -> 0/1 (or None when the sample's type is not exact-matched)
    exact: Callable[[Sample, str], float | None] | None = None
    description: str = ""
    published_key: str | None = None  # the task's name in llm-jp-eval-mm's leaderboard
    headline: str = "rouge_l"  # the metric a task is charted and compared by


class UnknownTask(ValueError):
    pass


BUILTIN = {
    "japanese-heron-bench": "synthgen.evaluator.tasks.heron_bench:task",
    "ja-vg-vqa-500": "synthgen.evaluator.tasks.vqa:ja_vg_vqa_500",
    "ja-vlm-bench-in-the-wild": "synthgen.evaluator.tasks.vqa:ja_vlm_bench_in_the_wild",
    "jdocqa": "synthgen.evaluator.tasks.jdocqa:task",
    "synthgen-heldout": "synthgen.evaluator.tasks.heldout:task",
}
GROUP = "synthgen.eval_tasks"


def _load_ref(ref: str) -> Task:
    module, _, attr = ref.partition(":")
    value = getattr(importlib.import_module(module), attr)
    if not isinstance(value, Task):
        raise TypeError(f"{ref} is not an evaluator Task")
    return value


def available() -> dict[str, str]:
    """Task name -> 'module:attr' (built-ins, then installed plugins)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def get_task(name: str) -> Task:
    refs = available()
    if name not in refs:
        raise UnknownTask(f"unknown task {name!r}; have {sorted(refs)}")
    return _load_ref(refs[name])


# -- loading helpers shared by the task modules -----------------------------------------------

def encoded_images(ds):
    """Image columns left encoded ({"bytes", "path"}): a picture goes to the model as the bytes it
    was stored as, not decoded to PIL and re-encoded per sample (tens of ms for a large JPEG)."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def image_bytes(value: Any) -> Any:
    """An encoded image cell -> its bytes (read from `path` when the bytes are not inline);
    PIL images and bytes pass through."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
        raise ValueError("an image cell with neither bytes nor path")
    return value


def open_table(source: str | None, hub_id: str, split: str):
    """A `datasets.Dataset` from a local copy or the Hub, image columns left encoded.

    A local copy is either a `save_to_disk` folder (Dataset or DatasetDict, `split` picked), or
    a folder / file of parquet, JSON Lines or CSV in the Hub repo's own layout; anything else is
    taken as a Hub dataset id.
    """
    return encoded_images(_open_table(source, hub_id, split))


def _open_table(source: str | None, hub_id: str, split: str):
    import datasets

    name = source or hub_id
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{path}: no split {split!r} (has {list(ds)})")
                ds = ds[split]
            return ds
        if path.is_file():
            kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise ValueError(f"{path}: not a parquet, JSON Lines or CSV file")
            return datasets.load_dataset(kind, data_files=str(path), split="train")
        return datasets.load_dataset(str(path), split=split)
    return datasets.load_dataset(name, split=split)


def text(value: Any) -> str:
    return "" if value is None else str(value)
