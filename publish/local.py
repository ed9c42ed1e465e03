"""Publish a finished run to a local folder in the Hub layout (`synthgen push RUN --local DIR`).

The folder is what the Hub repo would hold: README.md (the same merged card), one folder of
parquet shards per config, the manifest and sample thumbnails, so `datasets.load_dataset(DIR)`
(or `load_dataset(DIR, config)` once several configs share it) opens it, and copying it to
any Hub-compatible server or `huggingface-cli upload` publishes it unchanged.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from synthgen.publish import card as cards
from synthgen.publish import shards as shard_io
from synthgen.publish.prepare import prepare


@dataclass
class LocalResult:
    path: str
    config: str
    split: str
    rows: int
    shards: int
    license: str


def publish_local(run_dir: str | Path, out: str | Path, *, config: str | None = None, split: str = "train",
                  license: str | None = None, sources: list[cards.SourceInfo] | None = None,
                  max_shard_bytes: int = shard_io.MAX_SHARD_BYTES, row_group: int | None = None) -> LocalResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{os.getpid()}"
    try:
        prepared = prepare(run_dir, staging, repo_id=out.name, config=config, split=split, license=license,
                           sources=sources, max_shard_bytes=max_shard_bytes, row_group=row_group)
        staged, inputs = prepared.staged, prepared.card_inputs
        assert inputs is not None
        target = out / staged.config
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob(f"{split}-*.parquet"):
            old.unlink()
        for shard in staged.shards:
            os.replace(staged.path(shard), target / shard.name)
        for rel, local in prepared.extras.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, out / rel)
        readme = out / "README.md"
        existing = readme.read_text(encoding="utf-8") if readme.exists() else None
        text = cards.build_card(existing, inputs)
        tmp = out / "README.md.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, readme)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return LocalResult(path=str(out), config=staged.config, split=split, rows=staged.rows,
                       shards=len(staged.shards), license=inputs.license)
