"""Where curation reads from: any dataset as a stream of Arrow record batches.

A synthgen run folder is read through the run API (`synthgen.engine.runs`): the finished
dataset when there is one, else the committed rows of a run in progress. A `save_to_disk`
folder is memory-mapped, parquet files are read a row group at a time, JSON lines a block at
a time, and a Hub id is streamed, so no source is ever loaded whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class Source:
    name: str
    features: datasets.Features | None
    num_rows: int | None
    _batches: Callable[[int, list[str] | None], Iterator[pa.RecordBatch]]

    def batches(self, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        yield from self._batches(batch_size, columns)

    @property
    def column_names(self) -> list[str]:
        if self.features is not None:
            return list(self.features)
        first = next(self.batches(1), None)
        return first.schema.names if first is not None else []

    def count(self, column: str) -> dict[str, int]:
        """Value counts of one column, reading only that column."""
        counts: dict[str, int] = {}
        for batch in self.batches(8192, [column]):
            for value in batch.column(0).to_pylist():
                key = "" if value is None else str(value)
                counts[key] = counts.get(key, 0) + 1
        return counts


def _table_batches(table_iter: Iterator[pa.Table]) -> Iterator[pa.RecordBatch]:
    for table in table_iter:
        yield from table.combine_chunks().to_batches()


def _from_dataset(name: str, ds: datasets.Dataset) -> Source:
    def batches(size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        view = ds.select_columns(columns) if columns else ds
        yield from _table_batches(view.with_format("arrow").iter(batch_size=size))

    return Source(name, ds.features, ds.num_rows, batches)


def _pick_split(obj: Any, split: str) -> Any:
    if isinstance(obj, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split not in obj:
            raise ValueError(f"split {split!r} not found (have {list(obj)})")
        return obj[split]
    return obj


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in suffixes and ".synthgen" not in p.parts)


def _from_parquet(path: Path) -> Source:
    files = _files(path, (".parquet",))
    first = pq.ParquetFile(files[0])
    features = datasets.Features.from_arrow_schema(first.schema_arrow)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    def batches(size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        for f in files:
            yield from pq.ParquetFile(f).iter_batches(batch_size=size, columns=columns)

    return Source(str(path), features, rows, batches)


def _from_jsonl(path: Path) -> Source:
    import pyarrow.json as pj

    files = _files(path, (".jsonl", ".json"))

    def batches(size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        for f in files:
            reader = pj.open_json(f, read_options=pj.ReadOptions(block_size=1 << 22))
            schema = None
            for batch in reader:
                schema = schema or batch.schema
                if columns:
                    batch = batch.select(columns)
                for start in range(0, batch.num_rows, size):
                    yield batch.slice(start, size)

    probe = next(batches(1, None), None)
    features = datasets.Features.from_arrow_schema(probe.schema) if probe is not None else None
    return Source(str(path), features, None, batches)


def _from_hub(repo_id: str, split: str) -> Source:
    ds = _pick_split(datasets.load_dataset(repo_id, split=split, streaming=True), split)

    def batches(size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        view = ds.select_columns(columns) if columns else ds
        yield from _table_batches(view.with_format("arrow").iter(batch_size=size))

    return Source(repo_id, ds.features, None, batches)


def open_source(spec: str | Path, split: str = "train") -> Source:
    """A run folder, a `save_to_disk` folder, parquet or JSON-lines files, or a Hub dataset id."""
    from synthgen.engine.runs import NotARun, open_run

    path = Path(spec)
    if path.exists():
        if path.is_dir():
            try:
                run = open_run(path)
            except NotARun:
                run = None
            if run is not None and not run.finished:
                return _from_run_in_progress(path, run)
            if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
                ds = run.dataset() if run is not None else datasets.load_from_disk(str(path))
                return _from_dataset(str(path), _pick_split(ds, split))
        if _files(path, (".parquet",)):
            return _from_parquet(path)
        if _files(path, (".jsonl", ".json")):
            return _from_jsonl(path)
        raise ValueError(f"{path}: no dataset found (run folder, save_to_disk folder, parquet or jsonl)")
    if _HUB_ID.match(str(spec)):
        return _from_hub(str(spec), split)
    raise FileNotFoundError(f"{spec}: neither a local path nor a Hub dataset id")


def _from_run_in_progress(path: Path, run: Any) -> Source:
    def batches(size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        yield from run.iter_batches(batch_size=size, columns=columns)

    first = next(run.iter_batches(batch_size=1), None)
    features = datasets.Features.from_arrow_schema(first.schema) if first is not None else None
    return Source(str(path), features, run.count_rows(), batches)
