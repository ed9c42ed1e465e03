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


def publish(ds: datasets.Dataset, out: Path, repo_id: str, *, private: bool, token: str | None, split: str) -> str:
    """Push the dataset and its manifest to the Hub; returns the dataset's URL."""
    from huggingface_hub import HfApi

    ds.push_to_hub(repo_id, private=private, token=token, split=split)
    manifest = out / MANIFEST
    if manifest.exists():
        HfApi(token=token).upload_file(path_or_fileobj=str(manifest), path_in_repo="synthgen_manifest.json",
                                       repo_id=repo_id, repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo_id}"
