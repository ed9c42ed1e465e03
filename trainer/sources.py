"""Read training rows from synthgen datasets (local `save_to_disk` folders or Hub ids) and LLaVA JSON.

Every row becomes (image reference, OpenAI-style messages). Images stay undecoded until a batch
needs them: a reference is the raw bytes or a file path, which is also what the feature cache hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from synthgen.trainer.config import SourceConfig

log = logging.getLogger(__name__)
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class ImageRef:
    data: bytes | None = None
    path: str | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError("image reference has neither bytes nor path")
        return Path(self.path).read_bytes()

    def load(self) -> Image.Image:
        with Image.open(io.BytesIO(self.read())) as img:
            return img.convert("RGB")

    def size(self) -> tuple[int, int]:
        """(width, height) from the header alone (anyres token counts need it before any decoding)."""
        with Image.open(io.BytesIO(self.read())) as img:
            return img.size

    def digest(self) -> str:
        return hashlib.sha256(self.read()).hexdigest()


class Source:
    """One input: `len()` rows, each read by index (workers re-open nothing: Arrow is memory-mapped)."""

    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg
        fmt = cfg.format
        if fmt == "auto":
            fmt = "llava_json" if cfg.path.endswith((".json", ".jsonl")) else "synthgen"
        self.format = fmt
        if fmt == "llava_json":
            self._rows = _read_llava_json(Path(cfg.path))
            multi = 0
            for row in self._rows:
                image = row.get("image")
                if isinstance(image, list):
                    if len(image) > 1:
                        row["_unsupported"] = True
                        multi += 1
                    row["image"] = image[0] if image else None
            if multi:
                log.warning("%s: %d multi-image rows skipped (one image per record)", cfg.path, multi)
            root = Path(cfg.image_root) if cfg.image_root else Path(cfg.path).parent
            self._root = root
            self._ds = None
        else:
            ds = _open_dataset(cfg)
            missing = [c for c in (cfg.messages_column,) if c not in ds.column_names]
            if missing:
                raise ValueError(f"{cfg.path}: no column {missing[0]!r} (columns: {ds.column_names})")
            if cfg.image_column in ds.column_names and isinstance(ds.features[cfg.image_column], datasets.Image):
                ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
            self._ds = ds
            self._rows = None
        self.n = len(self._rows) if self._rows is not None else len(self._ds)
        if cfg.limit:
            self.n = min(self.n, cfg.limit)

    def __len__(self) -> int:
        return self.n

    def messages(self) -> Iterator[list[dict[str, Any]]]:
        """All rows' messages in order, read in batches (used once, to tokenize)."""
        if self._rows is not None:
            for row in self._rows[: self.n]:
                if row.get("_unsupported"):
                    yield None
                    continue
                try:
                    yield _llava_messages(row)
                except (ValueError, AttributeError, TypeError):
                    yield None  # counted as a skipped record by the encoder
            return
        col = self.cfg.messages_column
        for batch in self._ds.select(range(self.n)).select_columns([col]).iter(batch_size=1024):
            yield from batch[col]

    def image_flags(self) -> list[bool]:
        """Which rows have an image, without reading any image bytes."""
        if self._rows is not None:
            return [bool(r.get("image")) for r in self._rows[: self.n]]
        col = self.cfg.image_column
        if col not in self._ds.column_names:
            return [False] * self.n
        return self._ds.with_format("arrow")[: self.n][col].is_valid().to_pylist()

    def image(self, i: int) -> ImageRef | None:
        if self._rows is not None:
            name = self._rows[i].get("image")
            return ImageRef(path=str(self._root / name)) if name else None
        col = self.cfg.image_column
        if col not in self._ds.column_names:
            return None
        value = self._ds[i][col]
        if value is None:
            return None
        if isinstance(value, dict):
            return ImageRef(data=value.get("bytes"), path=value.get("path"))
        if isinstance(value, str):
            return ImageRef(path=value)
        raise ValueError(f"{self.cfg.path}: unsupported image value {type(value).__name__}")


def _open_dataset(cfg: SourceConfig) -> datasets.Dataset:
    path = Path(cfg.path)
    if cfg.path.startswith(("/", "./", "../")) and not path.exists():
        raise FileNotFoundError(f"dataset {cfg.path} does not exist")
    if path.is_dir() and not (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        # a published folder (README card + parquet per config): what `load_dataset` reads from the Hub
        return datasets.load_dataset(str(path), name=cfg.config, split=cfg.split)
    if path.exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise ValueError(f"{cfg.path}: no split {cfg.split!r} (has {list(ds)})")
            ds = ds[cfg.split]
        return ds
    return datasets.load_dataset(cfg.path, name=cfg.config, split=cfg.split)


def _read_llava_json(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    return rows


def _llava_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for turn in row.get("conversations") or []:
        role = LLAVA_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(f"unknown speaker {turn.get('from')!r}")
        out.append({"role": role, "content": turn.get("value", "")})
    return out
