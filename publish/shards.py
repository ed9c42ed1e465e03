"""Write a finished run as Hub-layout parquet shards (`{config}/{split}-00000-of-0000N.parquet`).

The shards are what both the Hub push and the local publish ship. They are written one
row group at a time from the run's memory-mapped dataset, so memory stays flat however
large the run; images are embedded as bytes under the `Image` feature (the parquet schema
carries the `datasets` features, so `load_dataset` decodes them as images again).

Shard boundaries depend only on the rows, so the same run always gives byte-identical
shards: a resumed push recognises the files it already sent by their sha256 and a staged
folder from an interrupted push is reused rather than rewritten.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import embed_table_storage

# The Hub's dataset viewer and `datasets.push_to_hub` aim at ~500 MB shards; images get
# small row groups (fast random access from the viewer), text larger ones.
MAX_SHARD_BYTES = 500 * 1024 * 1024
IMAGE_ROW_GROUP = 100
TEXT_ROW_GROUP = 1000
STAGED = "_staged.json"
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Shard:
    name: str  # path relative to the config folder, e.g. "train-00000-of-00002.parquet"
    rows: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Staged:
    folder: Path  # holds the config folder
    config: str
    split: str
    shards: list[Shard]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def path(self, shard: Shard) -> Path:
        return self.folder / self.config / shard.name

    def path_in_repo(self, shard: Shard) -> str:
        return f"{self.config}/{shard.name}"


def has_images(features: datasets.Features) -> bool:
    def walk(f: Any) -> bool:
        if isinstance(f, datasets.Image):
            return True
        if isinstance(f, dict):
            return any(walk(v) for v in f.values())
        if isinstance(f, list | tuple):
            return any(walk(v) for v in f)
        if isinstance(f, datasets.Sequence | datasets.List | datasets.LargeList):
            return walk(f.feature)
        return False

    return walk(features)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _key(ds: datasets.Dataset, split: str, max_shard_bytes: int, row_group: int | None) -> dict[str, Any]:
    return {"layout": LAYOUT_VERSION, "fingerprint": ds._fingerprint, "rows": len(ds), "split": split,
            "max_shard_bytes": max_shard_bytes, "row_group": row_group, "features": ds.features.to_dict()}


def stage(ds: datasets.Dataset, folder: Path, config: str, split: str = "train", *,
          max_shard_bytes: int = MAX_SHARD_BYTES, row_group: int | None = None) -> Staged:
    """Write (or reuse) `folder/config/{split}-*.parquet` for `ds`; returns the shard list."""
    target = Path(folder) / config
    record = target / f"{split}{STAGED}"
    key = _key(ds, split, max_shard_bytes, row_group)
    if record.exists():
        try:
            saved = orjson.loads(record.read_bytes())
        except orjson.JSONDecodeError:
            saved = {}
        shards = [Shard(**s) for s in saved.get("shards", [])]
        if saved.get("key") == orjson.loads(orjson.dumps(key)) and all(
                (target / s.name).exists() and (target / s.name).stat().st_size == s.size for s in shards):
            return Staged(Path(folder), config, split, shards)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob(f"{split}-*.parquet*"):
        old.unlink()
    schema = ds.features.arrow_schema
    group = row_group or (IMAGE_ROW_GROUP if has_images(ds.features) else TEXT_ROW_GROUP)
    parts: list[tuple[Path, int]] = []
    writer: pq.ParquetWriter | None = None
    written = rows = 0

    def close() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            parts.append((target / f"{split}.part{len(parts):05d}.tmp", rows))
            writer = None

    for table in ds.with_format("arrow").iter(batch_size=group):
        if writer is not None and written >= max_shard_bytes:
            close()
        if writer is None:
            writer = pq.ParquetWriter(str(target / f"{split}.part{len(parts):05d}.tmp"), schema)
            written = rows = 0
        table = embed_table_storage(pa.Table.from_batches(table.to_batches(), schema=schema)
                                    if table.schema != schema else table)
        writer.write_table(table, row_group_size=group)
        written += table.nbytes
        rows += table.num_rows
    close()
    if not parts:  # an empty run still publishes one (empty) shard so the config loads
        pq.write_table(schema.empty_table(), str(target / f"{split}.part00000.tmp"))
        parts.append((target / f"{split}.part00000.tmp", 0))
    shards = []
    for i, (tmp, n) in enumerate(parts):
        name = f"{split}-{i:05d}-of-{len(parts):05d}.parquet"
        os.replace(tmp, target / name)
        shards.append(Shard(name, n, (target / name).stat().st_size, _sha256(target / name)))
    record.write_bytes(orjson.dumps({"key": key, "shards": [asdict(s) for s in shards]}, option=orjson.OPT_INDENT_2))
    return Staged(Path(folder), config, split, shards)


def clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
