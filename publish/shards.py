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
import mmap
import os
import shutil
from collections.abc import Callable, Iterator
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
ROW_GROUP_BYTES = 32 * 1024 * 1024
TEXT_ROW_GROUP = 1000
STAGED = "_staged.json"
LAYOUT_VERSION = 2


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


def _has_path_only_images(table: pa.Table) -> bool:
    """An image stored as a file path rather than bytes (embedding copies the table: skip if none)."""
    for column in table.columns:
        if pa.types.is_struct(column.type) and {f.name for f in column.type} == {"bytes", "path"}:
            for chunk in column.chunks:
                if chunk.field("bytes").null_count > chunk.null_count:
                    return True
    return False


def stream_batches(ds: datasets.Dataset, rows: int) -> Iterator[pa.RecordBatch] | None:
    """The dataset's rows from its Arrow files, zero-copy, in batches of at most `rows`, with the
    pages already read handed back to the kernel as the reading moves on (madvise DONTNEED on a
    read-only map: they stay in the page cache, out of this process's resident set). So RSS stays
    flat however large the dataset. None when the dataset is not a plain on-disk table (an
    indices mapping, or in memory): the caller then iterates the dataset itself."""
    files = [f["filename"] for f in ds.cache_files]
    if ds._indices is not None or not files or not hasattr(mmap, "MADV_DONTNEED"):
        return None

    def gen() -> Iterator[pa.RecordBatch]:
        for name in files:
            with open(name, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    continue
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            src = pa.BufferReader(pa.py_buffer(mapped))
            for batch in pa.ipc.open_stream(src):
                for start in range(0, batch.num_rows, rows):
                    yield batch.slice(start, rows)
                done = src.tell() // mmap.PAGESIZE * mmap.PAGESIZE
                if done:
                    mapped.madvise(mmap.MADV_DONTNEED, 0, done)

    return gen()


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
          max_shard_bytes: int = MAX_SHARD_BYTES, row_group: int | None = None,
          batches: Callable[[int], Iterator[pa.RecordBatch]] | None = None) -> Staged:
    """Write (or reuse) `folder/config/{split}-*.parquet` for `ds`; returns the shard list.

    Rows are read from the dataset's Arrow files with plain reads rather than through its memory
    map, so the pages read stay out of this process's resident set and RSS stays flat too;
    `batches(n)` overrides the source (the same rows as `ds`, in order, in batches of n)."""
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
    images = has_images(ds.features)
    nested = images and not any(isinstance(f, datasets.Image) for f in ds.features.values())
    group = row_group or (IMAGE_ROW_GROUP if images else TEXT_ROW_GROUP)
    parts: list[tuple[Path, int]] = []
    writer: pq.ParquetWriter | None = None
    written = rows = 0
    pending: list[pa.Table] = []
    pending_rows = pending_bytes = 0

    def close() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            parts.append((target / f"{split}.part{len(parts):05d}.tmp", rows))
            writer = None
            pa.default_memory_pool().release_unused()

    def flush() -> None:
        """One row group of at most `group` rows and about ROW_GROUP_BYTES: memory is bounded by
        a few row groups, whatever the size of the run or of its images."""
        nonlocal writer, written, rows, pending, pending_rows, pending_bytes
        if not pending:
            return
        if writer is not None and written >= max_shard_bytes:
            close()
        if writer is None:
            writer = pq.ParquetWriter(str(target / f"{split}.part{len(parts):05d}.tmp"), schema)
            written = rows = 0
        table = pa.concat_tables(pending)
        writer.write_table(table, row_group_size=table.num_rows)
        written += pending_bytes
        rows += table.num_rows
        pending, pending_rows, pending_bytes = [], 0, 0

    step = max(1, min(group, 10)) if images else group
    streamed = batches(step) if batches is not None else stream_batches(ds, step)
    source = (pa.Table.from_batches([b]) for b in streamed) if streamed is not None else \
        ds.with_format("arrow").iter(batch_size=step)
    for table in source:
        if table.schema != schema:
            table = pa.Table.from_batches(table.select(schema.names).cast(schema).to_batches(), schema=schema)
        if images and (nested or _has_path_only_images(table)):
            table = embed_table_storage(table)
        pending.append(table)
        pending_rows += table.num_rows
        pending_bytes += table.nbytes
        if pending_rows >= group or pending_bytes >= ROW_GROUP_BYTES:
            flush()
    flush()
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
