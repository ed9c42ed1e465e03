"""Export a finished run for the trainers people already have (`synthgen export`).

- `llava`: `data.json` (a list of `{id, image, conversations}`, `from: human|gpt`, `<image>\\n` at
  the start of the first human turn) and `images/`, as LLaVA's `LazySupervisedDataset` reads it.
- `llava-jp`: the same layout with LLaVA-JP's speaker names: its `preprocess_v1` maps
  `{"ユーザー", "システム"}` to the conversation roles and raises KeyError on `human`/`gpt`.
- `trl`: parquet shards `load_dataset(DIR)` opens, with `messages` whose contents are typed parts
  (`{"type": "image"}`, `{"type": "text", "text": ...}`) and an `images` list holding one image
  per image part, the layout TRL's vision SFT collators and processors' chat templates expect;
  no literal `<image>` is left in any text.

Text-only runs export without images (no `image` key, no `images` column). Rows are read in
batches from the run's memory-mapped dataset and images are written as their original bytes
(no re-encoding), so an export of any size keeps memory flat. System turns have no place in
the LLaVA formats and are left out there; TRL keeps them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.engine.runs import open_run

Format = Literal["llava", "llava-jp", "trl"]
FORMATS: tuple[str, ...] = ("llava", "llava-jp", "trl")
IMAGE_TOKEN = "<image>"
SPEAKERS = {"llava": {"user": "human", "assistant": "gpt"},
            "llava-jp": {"user": "ユーザー", "assistant": "システム"}}
TRL_SHARD_ROWS = 5000
BATCH = 256


@dataclass
class ExportResult:
    format: str
    path: str
    rows: int
    images: int
    skipped: int


def _ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:3] == b"GIF":
        return ".gif"
    return ".img"


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path") and Path(value["path"]).exists():
            return Path(value["path"]).read_bytes()
    return None


def _clean(text: Any) -> str:
    return re.sub(r"\s*<image>\s*", "\n", str(text or "")).strip()


def _is_image_list(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and len(feature) == 1:
        inner = feature[0]
    return isinstance(inner, datasets.Image)


def _pictures(row: dict[str, Any]) -> list[bytes]:
    """A row's pictures in order: its `image`, or its `images` list (multi-image records)."""
    one = _image_bytes(row.get("image"))
    if one is not None:
        return [one]
    return [b for b in (_image_bytes(v) for v in row.get("images") or []) if b is not None]


def _rows(run_dir: str | Path) -> tuple[Iterator[dict[str, Any]], bool]:
    ds = open_run(run_dir).dataset()
    if "messages" not in ds.column_names:
        raise ValueError(f"{run_dir}: the run has no `messages` column to export")
    has_image = "image" in ds.column_names and isinstance(ds.features["image"], datasets.Image)
    if has_image:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    if "images" in ds.column_names and _is_image_list(ds.features["images"]):
        ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
        has_image = True

    def gen() -> Iterator[dict[str, Any]]:
        for batch in ds.iter(batch_size=BATCH):
            n = len(batch["messages"])
            for i in range(n):
                yield {k: batch[k][i] for k in batch}

    return gen(), has_image


def _turns(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m.get("role", ""), _clean(m.get("content"))) for m in messages or []]


def _llava(run_dir: str | Path, out: Path, fmt: str) -> ExportResult:
    speakers = SPEAKERS[fmt]
    rows, has_image = _rows(run_dir)
    if has_image:
        (out / "images").mkdir(parents=True, exist_ok=True)
    count = images = skipped = 0
    tmp = out / "data.json.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("[")
        for index, row in enumerate(rows):
            turns = [(speakers[r], t) for r, t in _turns(row["messages"]) if r in speakers]
            while turns and turns[0][0] != speakers["user"]:
                turns = turns[1:]
            alternating = all(t[0] == (speakers["user"], speakers["assistant"])[j % 2] for j, t in enumerate(turns))
            if len(turns) < 2 or not alternating:
                skipped += 1
                continue
            rid = str(row.get("key") or index)
            entry: dict[str, Any] = {"id": rid}
            pictures = _pictures(row) if has_image else []
            if len(pictures) > 1 and fmt == "llava-jp":
                skipped += 1  # LLaVA-JP's loader takes one image per conversation
                continue
            if pictures:
                names = []
                for k, data in enumerate(pictures):
                    names.append(f"{rid.replace(':', '_')}{f'-{k}' if len(pictures) > 1 else ''}{_ext(data)}")
                    (out / "images" / names[-1]).write_bytes(data)
                # One picture: LLaVA's `image` string; several: the list LLaVA-NeXT/OneVision read,
                # with one <image> per picture at the start of the first human turn.
                entry["image"] = names[0] if len(names) == 1 else names
                turns[0] = (turns[0][0], f"{IMAGE_TOKEN}\n" * len(names) + turns[0][1])
                images += len(names)
            entry["conversations"] = [{"from": s, "value": t} for s, t in turns]
            fh.write(("," if count else "") + "\n" + json.dumps(entry, ensure_ascii=False))
            count += 1
        fh.write("\n]\n")
    os.replace(tmp, out / "data.json")
    return ExportResult(fmt, str(out), count, images, skipped)


def _trl_features(has_image: bool) -> datasets.Features:
    if not has_image:
        return datasets.Features({"id": datasets.Value("string"), "messages": datasets.List(
            {"role": datasets.Value("string"), "content": datasets.Value("string")})})
    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    return datasets.Features({
        "id": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)}),
        "images": datasets.List(datasets.Image()),
    })


def _trl(run_dir: str | Path, out: Path) -> ExportResult:
    rows, has_image = _rows(run_dir)
    features = _trl_features(has_image)
    schema = features.arrow_schema
    count = images = skipped = 0
    buffer: list[dict[str, Any]] = []
    parts: list[Path] = []
    writer: pq.ParquetWriter | None = None
    in_shard = 0

    def flush() -> None:
        nonlocal writer, in_shard
        if not buffer:
            return
        if writer is None:
            parts.append(out / f"train.part{len(parts):05d}.tmp")
            writer = pq.ParquetWriter(str(parts[-1]), schema)
        writer.write_table(pa.Table.from_pylist([features.encode_example(r) for r in buffer], schema=schema))
        in_shard += len(buffer)
        buffer.clear()
        if in_shard >= TRL_SHARD_ROWS:
            writer.close()
            writer, in_shard = None, 0

    for index, row in enumerate(rows):
        turns = _turns(row["messages"])
        if not any(r == "assistant" for r, _ in turns):
            skipped += 1
            continue
        rid = str(row.get("key") or index)
        if not has_image:
            buffer.append({"id": rid, "messages": [{"role": r, "content": t} for r, t in turns]})
        else:
            messages = [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in turns]
            first_user = next((m for m in messages if m["role"] == "user"), None)
            pictures = _pictures(row) if first_user is not None else []
            if first_user is not None:  # one image part per picture, in order, before the text
                first_user["content"][:0] = [{"type": "image", "text": None} for _ in pictures]
            images += len(pictures)
            buffer.append({"id": rid, "messages": messages,
                           "images": [{"bytes": data, "path": None} for data in pictures]})
        count += 1
        if len(buffer) >= BATCH:
            flush()
    flush()
    if writer is not None:
        writer.close()
    if not parts:
        parts.append(out / "train.part00000.tmp")
        pq.write_table(schema.empty_table(), str(parts[-1]))
    for i, tmp in enumerate(parts):
        os.replace(tmp, out / f"train-{i:05d}-of-{len(parts):05d}.parquet")
    return ExportResult("trl", str(out), count, images, skipped)


def export(run_dir: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False) -> ExportResult:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return _trl(run_dir, out) if fmt == "trl" else _llava(run_dir, out, fmt)
