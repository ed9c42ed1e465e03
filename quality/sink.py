"""Where curation writes: a `save_to_disk` dataset folder, streamed one batch at a time, and
a JSON-lines log with one line per dropped record (its key, reason, step and detail).

The Arrow files are written directly (as the engine's finalize does for runs) so memory stays
flat for any size; `datasets.load_from_disk(OUT)` and `synthgen.engine.runs.open_run(OUT)`
both open the result.
"""

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

ARROW_FILE_BYTES = 512 * 1024 * 1024
DROPS = "drops.jsonl"


class DatasetWriter:
    def __init__(self, out: Path, features: datasets.Features) -> None:
        self.out = out
        self.features = features
        self.schema = features.arrow_schema
        self.rows = 0
        self._names: list[str] = []
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink: pa.OSFile | None = None
        self._fingerprint = hashlib.sha256()
        self._roll()

    def _roll(self) -> None:
        self._close_file()
        self._names.append(f"data-{len(self._names):05d}.arrow.tmp")
        self._sink = pa.OSFile(str(self.out / self._names[-1]), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)

    def _close_file(self) -> None:
        if self._writer is not None and self._sink is not None:
            self._writer.close()
            self._sink.close()
        self._writer = self._sink = None

    def write(self, columns: list[pa.Array]) -> None:
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        if not batch.num_rows:
            return
        assert self._writer is not None and self._sink is not None
        if self._sink.tell() > ARROW_FILE_BYTES:
            self._roll()
            assert self._writer is not None
        self._writer.write_batch(batch)
        self.rows += batch.num_rows
        self._fingerprint.update(str(self.rows).encode())

    def close(self) -> None:
        self._close_file()
        final = [f"data-{i:05d}-of-{len(self._names):05d}.arrow" for i in range(len(self._names))]
        for tmp, name in zip(self._names, final, strict=True):
            os.replace(self.out / tmp, self.out / name)
        state = {"_data_files": [{"filename": n} for n in final], "_fingerprint": self._fingerprint.hexdigest()[:16],
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": None}
        info = asdict(datasets.DatasetInfo(features=self.features))
        _atomic(self.out / "dataset_info.json", json.dumps({k: info[k] for k in sorted(info)}, indent=2).encode())
        _atomic(self.out / "state.json", json.dumps(state, indent=2, sort_keys=True).encode())


class DropLog:
    """drops.jsonl: appended in stream order, so the n-th line is the n-th record dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - held open for the run, closed in close()
        self.counts: dict[str, int] = {}

    def add(self, key: str, reason: str, step: str, detail: dict[str, Any] | None = None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        line = {"key": key, "reason": reason, "step": step}
        if detail:
            line["detail"] = detail
        self._fh.write(orjson.dumps(line, default=str) + b"\n")

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    _atomic(path, orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str))
