"""Append-only parquet shards, a failures file, and an atomically replaced progress marker.

A shard counts only once the marker names it, and the failures file only up to the byte
length the marker records; anything past that was written by a run that died before its
marker moved, and resume discards it. So a kill at any instant loses at most the rows
still in memory, and never duplicates one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
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


class ProvenanceChanged(RunExists):
    """A resume whose generator version, prompts, models or sampling differ from the records
    already written; the message names what changed and the two ways on."""


class RunDamaged(RunExists):
    """The progress marker itself cannot be read: nothing can be trusted without it."""


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
    # provenance id -> what made the records (generator version, prompt hashes, models, sampling)
    provenances: dict[str, Any] = field(default_factory=dict)
    # Shard files are numbered from this counter, not from len(shards): a shard set aside
    # (damaged, or superseded by --refresh) must never have its name reused.
    next_shard: int = 0
    # What resume repaired or replaced, for the manifest and the user.
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_INDENT_2)

    def records_by_provenance(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for shard in self.shards:
            pid = shard.get("provenance", "unknown")
            counts[pid] = counts.get(pid, 0) + int(shard["records"])
        return counts


def provenance_id(provenance: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(provenance, option=orjson.OPT_SORT_KEYS), digest_size=6).hexdigest()


def provenance_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences, e.g. `prompt template question.j2`, `model of role writer`."""
    changes = []
    if old.get("generator_version") != new.get("generator_version"):
        changes.append(f"generator version {old.get('generator_version')} -> {new.get('generator_version')}")
    old_t, new_t = old.get("prompt_templates", {}), new.get("prompt_templates", {})
    for name in sorted(set(old_t) | set(new_t)):
        if old_t.get(name) != new_t.get(name):
            changes.append(f"prompt template {name}")
    old_m, new_m = old.get("models", {}), new.get("models", {})
    for role in sorted(set(old_m) | set(new_m)):
        a, b = old_m.get(role) or {}, new_m.get(role) or {}
        if (a.get("engine"), a.get("model")) != (b.get("engine"), b.get("model")):
            changes.append(f"model of role {role}: {a.get('model')} -> {b.get('model')}")
        if a.get("sampling") != b.get("sampling"):
            changes.append(f"sampling of role {role}: {a.get('sampling')} -> {b.get('sampling')}")
    return changes or ["provenance (unrecorded by an older synthgen)"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        self.provenance_id = "unknown"
        self.new_notes: list[str] = []  # what this open repaired or replaced
        # This open started the run (and made its folder): a run that fails before it commits
        # anything removes them again, so a spec error never blocks the next try.
        self.created = False
        self.made_out = False

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, out: Path, features: datasets.Features, identity: dict[str, Any], *, resume: bool,
             provenance: dict[str, Any] | None = None, on_change: str = "stop") -> ShardStore:
        """Open (or create) the run folder's store.

        `on_change` says what a resume does with records of another provenance: `stop` raises
        ProvenanceChanged, `accept` keeps them, `refresh` sets them aside so their inputs run
        again under the current provenance.
        """
        state = out / STATE_DIR
        marker = state / MARKER
        provenance = provenance or {}
        pid = provenance_id(provenance)
        fresh = made_out = False
        if marker.exists():
            if not resume:
                raise RunExists(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
            try:
                data = orjson.loads(marker.read_bytes())
                data.setdefault("next_shard", len(data.get("shards", [])))
                progress = Progress(**data)
            except (orjson.JSONDecodeError, TypeError, OSError) as exc:
                raise RunDamaged(f"{out}: the progress marker is unreadable ({type(exc).__name__}); "
                                 "the run cannot be resumed safely: start it in another --out") from None
            if progress.identity != identity:
                diff = {k for k in identity if progress.identity.get(k) != identity[k]}
                raise RunExists(f"{out} holds a different run (differs in {sorted(diff)}); choose another --out")
        else:
            if out.exists() and any(p.name != STATE_DIR for p in out.iterdir()):
                raise RunExists(f"{out} exists and is not empty; choose another --out")
            fresh, made_out = True, not out.exists()
            state.mkdir(parents=True, exist_ok=True, mode=0o700)
            progress = Progress(identity=identity)
            atomic_write(marker, progress.to_json())
        store = cls(out, features, progress)
        store.created, store.made_out = fresh, made_out
        store.provenance_id = pid
        store._discard_uncommitted()
        store._set_aside_damaged()
        store._apply_provenance(pid, provenance, on_change)
        return store

    def _set_aside(self, shards: list[dict[str, Any]], folder: str, why: str) -> None:
        """Move shards out of the run (kept under .synthgen/<folder>/ for a person to inspect)
        and commit a marker without them; their records' inputs run again."""
        if not shards:
            return
        aside = self.state / folder
        aside.mkdir(exist_ok=True, mode=0o700)
        p = self.progress
        for shard in shards:
            path = self.state / shard["file"]
            if path.exists():
                shutil.move(str(path), str(aside / shard["file"]))
            p.shards.remove(shard)
            p.records -= int(shard["records"])
            p.rows -= int(shard["rows"])
        records = sum(int(s["records"]) for s in shards)
        note = (f"{why}: {len(shards)} shard(s) with {records} record(s) set aside in "
                f"{STATE_DIR}/{folder}/; their inputs are generated again")
        p.notes.append(note)
        self.new_notes.append(note)
        atomic_write(self.state / MARKER, p.to_json())

    def _set_aside_damaged(self) -> None:
        damaged = []
        for shard in self.progress.shards:
            path = self.state / shard["file"]
            if not path.is_file() or ("sha256" in shard and (
                    path.stat().st_size != shard.get("bytes") or _sha256(path) != shard["sha256"])):
                damaged.append(shard)
        self._set_aside(damaged, "damaged", "damaged or missing shards")

    def _apply_provenance(self, pid: str, provenance: dict[str, Any], on_change: str) -> None:
        p = self.progress
        stale = [s for s in p.shards if s.get("provenance") != pid]
        if stale and on_change == "stop":
            old_id = stale[0].get("provenance", "unknown")
            changes = provenance_diff(p.provenances.get(old_id, {}), provenance)
            raise ProvenanceChanged(
                f"{self.out}: {sum(int(s['records']) for s in stale)} record(s) were made differently: "
                + "; ".join(changes)
                + ". Pass --accept-changes to keep them and fill the rest under the new settings, or "
                "--refresh to regenerate them, or choose another --out.")
        if stale and on_change == "refresh":
            self._set_aside(stale, "superseded", "refreshed (provenance changed)")
        if pid not in p.provenances:
            p.provenances[pid] = provenance
            atomic_write(self.state / MARKER, p.to_json())

    def remove_if_empty(self) -> bool:
        """Undo a run this open started if nothing was committed; True when removed."""
        p = self.progress
        if not self.created or p.shards or p.failures_bytes or self._rows or self._failures:
            return False
        shutil.rmtree(self.state, ignore_errors=True)
        failures = self.out / FAILURES
        if failures.exists() and failures.stat().st_size == 0:
            failures.unlink()
        if self.made_out:
            with contextlib.suppress(OSError):
                self.out.rmdir()
        return True

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
                    try:
                        keys.add(orjson.loads(line)["key"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue  # a damaged line: that input simply runs again
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
            name = f"rows-{p.next_shard:06d}.parquet"
            p.next_shard += 1
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
            p.shards.append({"file": name, "rows": len(rows), "records": records, "provenance": self.provenance_id,
                             "bytes": path.stat().st_size, "sha256": _sha256(path)})
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
