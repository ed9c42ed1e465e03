"""A held-out split of one of our own generated datasets: does the model answer like the data?

The split is a pure function of each row's `key` (the engine's record key; a hash of the
conversation where a dataset has none): a row is held out when blake2b(key) falls in the first
`fraction` of the hash space. So `synthgen eval split RUN --out DIR` writes the same train/test
DatasetDict every time, the trainer reads `{path: DIR, split: train}`, and this task reads
`test` — the rows the model never saw. Given a run folder or plain dataset folder instead, the
task applies the same split itself and evaluates its held-out part.

A row becomes a sample from its first user turn (question, the `<image>` placeholder removed: the
picture is sent first)
and the first assistant turn (reference); rows without an image are evaluated text-only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthgen.evaluator.tasks import Sample, Task, encoded_images, image_bytes, text

DEFAULT_FRACTION = 0.05
PLACEHOLDER = "<image>"


def row_key(row: dict[str, Any]) -> str:
    if row.get("key"):
        return str(row["key"])
    return hashlib.blake2b(json.dumps(row.get("messages"), ensure_ascii=False, sort_keys=True).encode(),
                           digest_size=16).hexdigest()


def is_held_out(key: str, fraction: float) -> bool:
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
    return bucket < fraction


def _open(path: Path):
    import datasets

    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    from synthgen.engine.runs import NotARun, open_run

    try:
        return open_run(path).dataset()
    except NotARun:
        return datasets.load_from_disk(str(path))


def split(source: str | Path, fraction: float = DEFAULT_FRACTION):
    """source (a run folder or a dataset folder) -> DatasetDict(train=..., test=...)."""
    import datasets

    ds = _open(Path(source))
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{source} already holds splits {list(ds)}")
    keys = [row_key(r) for r in ds.select_columns([c for c in ("key", "messages") if c in ds.column_names])]
    held = [i for i, k in enumerate(keys) if is_held_out(k, fraction)]
    held_set = set(held)
    kept = [i for i in range(len(keys)) if i not in held_set]
    return datasets.DatasetDict(train=ds.select(kept), test=ds.select(held))


def write_split(source: str | Path, out: str | Path, fraction: float = DEFAULT_FRACTION) -> dict[str, int]:
    parts = split(source, fraction)
    parts.save_to_disk(str(out))
    return {name: len(part) for name, part in parts.items()}


def _first(messages: list[dict[str, Any]], role: str) -> str:
    for m in messages or []:
        if m.get("role") == role:
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            return text(content)
    return ""


def load(source: str | None) -> Iterator[Sample]:
    import datasets

    if not source:
        raise ValueError("synthgen-heldout needs a source: a run folder, a dataset folder, or a split folder")
    ds = _open(Path(source))
    if isinstance(ds, datasets.DatasetDict):
        if "test" not in ds:
            raise ValueError(f"{source}: no 'test' split (has {list(ds)})")
        rows = ds["test"]
    else:
        rows = split(source)["test"]
    rows = encoded_images(rows)
    for row in rows:
        # the picture goes first, as the trainer's "<image>\n質問" format puts it; the rest of the
        # turn is kept as written (newline included), so the model sees the layout it was trained on
        question = _first(row["messages"], "user").replace(PLACEHOLDER, "", 1)
        reference = _first(row["messages"], "assistant")
        if not question.strip() or not reference:
            continue
        image = row.get("image")
        yield Sample(id=row_key(row), question=question, reference=reference, images=[image_bytes(image)] if image else [])


task = Task(name="synthgen-heldout", title="synthgen held-out", hub_id="", split="test", load=load,
            description="rows of one of our datasets the model was not trained on; Rouge-L and judge")
