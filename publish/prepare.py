"""Everything a publish ships, built once for the Hub push and the local folder alike.

From a finished run (read only through `synthgen.engine.runs`): the parquet shards of one
config/split, a few thumbnails for the card's sample rows, the run's manifest, and the card
inputs (licence resolved against the sources, task categories, counts).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import orjson
from PIL import Image

from synthgen.engine.runs import open_run
from synthgen.publish import card as cards
from synthgen.publish import shards as shard_io

SAMPLE_ROWS = 3
THUMB_SIDE = 256
TURN_CHARS = 200
CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
SPLIT_NAME = re.compile(r"^\w{1,64}$")


@dataclass
class Prepared:
    staged: shard_io.Staged
    extras: dict[str, Path] = field(default_factory=dict)  # path in repo -> local file
    card_inputs: cards.CardInputs | None = None


def check_names(config: str, split: str) -> None:
    if not CONFIG_NAME.match(config):
        raise ValueError(f"config name {config!r}: letters, digits, '.', '_' or '-' (at most 96)")
    if not SPLIT_NAME.match(split):
        raise ValueError(f"split name {split!r}: letters, digits or '_' (at most 64)")


def detected_sources(manifest: dict[str, Any]) -> list[cards.SourceInfo]:
    """Hub dataset ids the generator read from (params such as `source` or `personas`)."""
    found = []
    for key in ("source", "personas", "dataset"):
        value = (manifest.get("params") or {}).get(key)
        if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value) and not Path(value).exists():
            found.append(cards.SourceInfo(name=value))
    return found


def merge_sources(given: list[cards.SourceInfo], detected: list[cards.SourceInfo]) -> list[cards.SourceInfo]:
    names = {s.name for s in given}
    return [*given, *[s for s in detected if s.name not in names]]


def _thumbnail(value: Any, out: Path) -> bool:
    data = value.get("bytes") if isinstance(value, dict) else None
    if data is None and isinstance(value, dict) and value.get("path") and Path(value["path"]).exists():
        data = Path(value["path"]).read_bytes()
    if not data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMB_SIDE, THUMB_SIDE))
            out.parent.mkdir(parents=True, exist_ok=True)
            img.save(out, format="JPEG", quality=85)
        return True
    except (OSError, ValueError):
        return False


def _samples(ds: datasets.Dataset, folder: Path, config: str, split: str) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    n = min(SAMPLE_ROWS, len(ds))
    if n == 0:
        return [], {}
    part = ds.select(range(n))
    if "image" in part.column_names and isinstance(part.features["image"], datasets.Image):
        part = part.cast_column("image", datasets.Image(decode=False))
    samples, extras = [], {}
    for i, row in enumerate(part):
        image = None
        if row.get("image") is not None:
            rel = f"{config}/samples/{split}-{i}.jpg"
            if _thumbnail(row["image"], folder / rel):
                image, extras[rel] = rel, folder / rel
        turns = []
        for m in row.get("messages") or []:
            text = str(m.get("content", "")).replace("<image>", "").replace("\n", " ").strip()
            turns.append((m.get("role", ""), text[:TURN_CHARS] + ("…" if len(text) > TURN_CHARS else "")))
        samples.append({"image": image, "turns": turns})
    return samples, extras


def prepare(run_dir: str | Path, folder: Path, *, repo_id: str, config: str | None = None, split: str = "train",
            license: str | None = None, sources: list[cards.SourceInfo] | None = None,
            max_shard_bytes: int = shard_io.MAX_SHARD_BYTES, row_group: int | None = None) -> Prepared:
    run = open_run(run_dir)
    ds = run.dataset()
    manifest = run.manifest() or {}
    generator = (manifest.get("generator") or {}).get("name") or "default"
    config = config or generator
    check_names(config, split)
    all_sources = merge_sources(list(sources or []), detected_sources(manifest))
    resolved = cards.resolve_license(license, all_sources)
    staged = shard_io.stage(ds, folder, config, split, max_shard_bytes=max_shard_bytes, row_group=row_group)
    samples, extras = _samples(ds, folder, config, split)
    manifest_path = folder / config / f"{split}_synthgen_manifest.json"
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2, default=str))
    extras[f"{config}/synthgen_manifest-{split}.json"] = manifest_path
    images = shard_io.has_images(ds.features)
    inputs = cards.CardInputs(
        repo_id=repo_id, config=config, split=split, rows=len(ds), manifest=manifest, license=resolved,
        sources=all_sources, samples=samples, task_categories=cards.task_categories_for(generator, images),
        has_images=images, data_path=f"{config}/{split}-*")
    return Prepared(staged=staged, extras=extras, card_inputs=inputs)
