"""On-disk cache of frozen vision-tower outputs, so stages with a frozen tower never run it.

Layout: <cache_dir>/<fingerprint>/shard-NNNNN.npy (an (n, tokens, dim) array) plus
shard-NNNNN.keys.json (the sha256 of each row's image bytes). The fingerprint covers the tower's
weights, config, feature layer/selection and image preprocessing (assemble.vision_fingerprint),
so a different model or setting never reads stale features. Shards are written to a temp name
and renamed, keys last: an interrupted build keeps every finished shard and redoes only the rest.

Reading is a memory-mapped row copy in the DataLoader worker (np.load(mmap_mode="r")), contiguous
per image, so a batch costs a few sequential reads and no decoding.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
SHARD_ROWS = 2048


class FeatureReader:
    """Picklable handle; each process opens the memory maps on first use."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "_maps": {}}

    def read(self, where: np.ndarray) -> np.ndarray:
        shard, row = int(where[0]), int(where[1])
        if shard < 0:
            raise KeyError("no cached features for this image (it could not be read)")
        arr = self._maps.get(shard)
        if arr is None:
            arr = self._maps[shard] = np.load(self.paths[shard], mmap_mode="r")
        return np.array(arr[row])


class FeatureStore:
    def __init__(self, root: Path, fingerprint: str):
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[int, int]] = {}
        self.paths: list[str] = []
        for keys_file in sorted(self.dir.glob("shard-*.keys.json")):
            npy = keys_file.with_name(keys_file.name.replace(".keys.json", ".npy"))
            if not npy.exists():
                continue
            shard = len(self.paths)
            self.paths.append(str(npy))
            for row, key in enumerate(json.loads(keys_file.read_text())):
                self.index.setdefault(key, (shard, row))

    def missing(self, keys: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for k in keys:
            if k not in self.index and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def write_shard(self, keys: list[str], feats: np.ndarray) -> None:
        n = len(list(self.dir.glob("shard-*.npy")))
        name = f"shard-{n:05d}"
        tmp = self.dir / f".{name}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(feats))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / f"{name}.npy")
        ktmp = self.dir / f".{name}.keys.tmp"
        ktmp.write_text(json.dumps(keys))
        os.replace(ktmp, self.dir / f"{name}.keys.json")
        shard = len(self.paths)
        self.paths.append(str(self.dir / f"{name}.npy"))
        for row, key in enumerate(keys):
            self.index.setdefault(key, (shard, row))

    def rows(self, keys: Sequence[str | None]) -> np.ndarray:
        """(n, 2) [shard, row] per key; -1 where a record has no image or its image could not be read."""
        out = np.full((len(keys), 2), -1, dtype=np.int64)
        for i, k in enumerate(keys):
            if k is not None and k in self.index:
                out[i] = self.index[k]
        return out

    def reader(self) -> FeatureReader:
        return FeatureReader(list(self.paths))


def fill(store: FeatureStore, keys: list[str], load: Callable[[str], object], encode: Callable[[list], torch.Tensor],
         batch_size: int, dtype: np.dtype, shard_rows: int = SHARD_ROWS,
         progress: Callable[[int, int], None] | None = None) -> int:
    """Encode every missing key (load(key) -> PIL image, encode(images) -> features) into new shards."""
    todo = store.missing(keys)
    if not todo:
        return 0
    log.info("feature cache: encoding %d images into %s", len(todo), store.dir)
    done = 0
    for start in range(0, len(todo), shard_rows):
        chunk = todo[start: start + shard_rows]
        parts, kept = [], []
        for b in range(0, len(chunk), batch_size):
            imgs = []
            for k in chunk[b: b + batch_size]:
                try:
                    imgs.append(load(k))
                    kept.append(k)
                except (OSError, ValueError) as exc:  # one unreadable image loses its rows, not the run
                    log.warning("feature cache: skipping unreadable image %s: %s", k[:12], exc)
            if imgs:
                parts.append(encode(imgs).to("cpu", torch.float32).numpy().astype(dtype, copy=False))
        if kept:
            store.write_shard(kept, np.concatenate(parts))
        done += len(chunk)
        if progress:
            progress(done, len(todo))
    return done
