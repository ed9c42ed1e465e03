"""Turn committed shards into a `datasets` folder that `load_from_disk(OUT)` opens."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.engine.checkpoint import ShardStore, atomic_write

MANIFEST = "manifest.json"


ARROW_FILE_BYTES = 512 * 1024 * 1024


def save_dataset(store: ShardStore) -> datasets.Dataset:
    """Stream committed shards into the `save_to_disk` layout, one record batch at a time.

    Writing the Arrow files directly (rather than `from_parquet` + `save_to_disk`) keeps memory
    flat however large the run: `save_to_disk` reads a memory-mapped copy whole, which showed
    as ~80 MB more peak RSS at 100k records than at 10k.
    """
    out = store.out
    for old in out.glob("data-*.arrow"):
        old.unlink()
    schema = store.features.arrow_schema
    names: list[str] = []
    writer: pa.ipc.RecordBatchStreamWriter | None = None
    sink: pa.OSFile | None = None
    fingerprint = hashlib.sha256()

    def roll() -> None:
        nonlocal writer, sink
        if writer is not None and sink is not None:
            writer.close()
            sink.close()
        names.append(f"data-{len(names):05d}.arrow.tmp")
        sink = pa.OSFile(str(out / names[-1]), "wb")
        writer = pa.ipc.new_stream(sink, schema)

    roll()
    for path in store.shard_paths():
        fingerprint.update(path.name.encode())
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            assert writer is not None and sink is not None
            if sink.tell() > ARROW_FILE_BYTES:
                roll()
            writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
    assert writer is not None and sink is not None
    writer.close()
    sink.close()
    final = [f"data-{i:05d}-of-{len(names):05d}.arrow" for i in range(len(names))]
    for tmp, name in zip(names, final, strict=True):
        os.replace(out / tmp, out / name)
    state = {"_data_files": [{"filename": n} for n in final], "_fingerprint": fingerprint.hexdigest()[:16],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    info = asdict(datasets.DatasetInfo(features=store.features))
    atomic_write(out / "dataset_info.json", json.dumps({k: info[k] for k in sorted(info)}, indent=2).encode())
    atomic_write(out / "state.json", json.dumps(state, indent=2, sort_keys=True).encode())
    return datasets.load_from_disk(str(out))


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    path = out / MANIFEST
    atomic_write(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2, default=str))
    return path
