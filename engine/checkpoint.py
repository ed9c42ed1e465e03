"""Append-only parquet shards, a failures file, and an atomically replaced progress marker.

A shard counts only once the marker names it, and the failures file only up to the byte
length the marker records; anything past that was written by a run that died before its
marker moved, and resume discards it. So a kill at any instant loses at most the rows
still in memory, and never duplicates one.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.engine.keys import record_of

STATE_DIR = ".synthgen"
MARKER = "progress.json"
FAILURES = "failures.jsonl"


class RunExists(RuntimeError):
    pass


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Progress:
    identity: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)
    failures_bytes: int = 0
    records: int = 0
    rows: int = 0
    failed: int = 0
    usage: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_INDENT_2)


def _needs_encoding(feature: Any) -> bool:
    if isinstance(feature, dict):
        return any(_needs_encoding(f) for f in feature.values())
    if isinstance(feature, list | tuple):
        return any(_needs_encoding(f) for f in feature)
    if isinstance(feature, datasets.Sequence | datasets.LargeList | datasets.List):
        return _needs_encoding(feature.feature)
    return not isinstance(feature, datasets.Value)


class ShardStore:
    """Buffers rows and failures in memory and commits them together on `flush`."""

    def __init__(self, out: Path, features: datasets.Features, progress: Progress) -> None:
        self.out = out
        self.state = out / STATE_DIR
        self.features = features
        self.schema = features.arrow_schema
        # Images (and other media) must be encoded to {bytes, path}; plain values need nothing.
        self._needs_encoding = any(_needs_encoding(f) for f in features.values())
        self.progress = progress
        self._rows: list[dict[str, Any]] = []
        self._records = 0
        self._failures: list[bytes] = []
        self._failed = 0
        self._lock = threading.Lock()
        self._flushing = asyncio.Lock()

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, out: Path, features: datasets.Features, identity: dict[str, Any], *, resume: bool) -> ShardStore:
        state = out / STATE_DIR
        marker = state / MARKER
        if marker.exists():
            if not resume:
                raise RunExists(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
            data = orjson.loads(marker.read_bytes())
            if data["identity"] != identity:
                diff = {k for k in identity if data["identity"].get(k) != identity[k]}
                raise RunExists(f"{out} holds a different run (differs in {sorted(diff)}); choose another --out")
            progress = Progress(**data)
        else:
            if out.exists() and any(p.name != STATE_DIR for p in out.iterdir()):
                raise RunExists(f"{out} exists and is not empty; choose another --out")
            state.mkdir(parents=True, exist_ok=True)
            progress = Progress(identity=identity)
            atomic_write(marker, progress.to_json())
        store = cls(out, features, progress)
        store._discard_uncommitted()
        return store

    def _discard_uncommitted(self) -> None:
        named = {s["file"] for s in self.progress.shards}
        for path in self.state.glob("rows-*.parquet"):
            if path.name not in named:
                path.unlink()
        failures = self.out / FAILURES
        if failures.exists() and failures.stat().st_size > self.progress.failures_bytes:
            with open(failures, "r+b") as fh:
                fh.truncate(self.progress.failures_bytes)

    def done_keys(self, include_failed: bool) -> set[str]:
        """Record keys already committed; read only on resume, so a fresh run holds no key set."""
        keys: set[str] = set()
        for shard in self.progress.shards:
            col = pq.read_table(self.state / shard["file"], columns=["key"]).column("key")
            keys.update(record_of(k) for k in col.to_pylist())
        failures = self.out / FAILURES
        if include_failed and failures.exists():
            with open(failures, "rb") as fh:
                for line in fh:
                    keys.add(orjson.loads(line)["key"])
        return keys

    # -- writing ----------------------------------------------------------------------------
    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows.extend(rows)
            self._records += 1

    def add_failure(self, failure: dict[str, Any]) -> None:
        with self._lock:
            self._failures.append(orjson.dumps(failure, default=str) + b"\n")
            self._failed += 1

    @property
    def buffered_rows(self) -> int:
        return len(self._rows)

    async def flush(self, usage: dict[str, Any] | None = None) -> None:
        """Encode and write off the event loop; one flush at a time."""
        async with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
                records, self._records = self._records, 0
                failures, self._failures = self._failures, []
                failed, self._failed = self._failed, 0
            await asyncio.to_thread(self._commit, rows, records, failures, failed, usage)

    def _commit(self, rows: list[dict[str, Any]], records: int, failures: list[bytes], failed: int,
                usage: dict[str, Any] | None) -> None:
        p = self.progress
        if rows:
            name = f"rows-{len(p.shards):06d}.parquet"
            if self._needs_encoding:
                columns = self.features.encode_batch({k: [r.get(k) for r in rows] for k in self.features})
                table = pa.Table.from_pydict(columns, schema=self.schema)
            else:  # plain values: Arrow converts them directly, much faster than encode_batch
                table = pa.Table.from_pylist(rows, schema=self.schema)
            path = self.state / name
            with open(path, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            p.shards.append({"file": name, "rows": len(rows), "records": records})
        if failures:
            with open(self.out / FAILURES, "ab") as fh:
                fh.write(b"".join(failures))
                fh.flush()
                os.fsync(fh.fileno())
                p.failures_bytes = fh.tell()
        p.records += records
        p.rows += len(rows)
        p.failed += failed
        if usage is not None:
            p.usage = usage
        atomic_write(self.state / MARKER, p.to_json())

    def shard_paths(self) -> list[Path]:
        return [self.state / s["file"] for s in self.progress.shards]
