"""Turn committed shards into a `datasets` folder that `load_from_disk(OUT)` opens."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import datasets
import orjson

from synthgen.generators.engine.checkpoint import STATE_DIR, ShardStore, atomic_write

MANIFEST = "manifest.json"


def build_dataset(store: ShardStore) -> datasets.Dataset:
    """Shards -> one Dataset, memory-mapped from an Arrow cache inside the run folder."""
    paths = [str(p) for p in store.shard_paths()]
    if not paths:
        return datasets.Dataset.from_dict({k: [] for k in store.features}, features=store.features)
    cache = store.state / "cache"
    ds = datasets.Dataset.from_parquet(paths, features=store.features, cache_dir=str(cache), keep_in_memory=False)
    assert isinstance(ds, datasets.Dataset)
    return ds


def save_dataset(store: ShardStore) -> datasets.Dataset:
    out = store.out
    ds = build_dataset(store)
    for old in out.glob("data-*.arrow"):
        old.unlink()
    ds.save_to_disk(str(out), num_shards=1 if len(ds) == 0 else None)
    shutil.rmtree(store.state / "cache", ignore_errors=True)
    return datasets.load_from_disk(str(out))


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    path = out / MANIFEST
    atomic_write(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2, default=str))
    return path


def state_dir(out: Path) -> Path:
    return out / STATE_DIR
