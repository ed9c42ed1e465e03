"""The run API: everything outside the engine reads a run folder through this module.

The engine owns the on-disk layout (parquet shards under `.synthgen/`, the progress marker,
`failures.jsonl`, `manifest.json`, the finished `save_to_disk` dataset). The service, the
dashboard, publishing, curation and evaluation ask a `Run` for rows, failures, the manifest
or the finished dataset, so the layout can change in one place.

Only shards the progress marker names are read, so a preview never shows a row that a
crash would later discard; the finished dataset is built from the same shards in the same
order, so a preview of a finished run shows the dataset's rows in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from synthgen.engine.checkpoint import FAILURES, MARKER, STATE_DIR

MANIFEST = "manifest.json"


class NotARun(FileNotFoundError):
    """The folder holds neither a run in progress nor a finished run."""


@dataclass(frozen=True)
class Run:
    path: Path

    # -- what is there ----------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return (self.path / STATE_DIR / MARKER).exists()

    @property
    def finished(self) -> bool:
        """A finished dataset folder exists (the run completed or ended incomplete)."""
        return (self.path / "dataset_info.json").exists() and (self.path / "state.json").exists()

    def manifest(self) -> dict[str, Any] | None:
        path = self.path / MANIFEST
        if not path.exists():
            return None
        try:
            return dict(orjson.loads(path.read_bytes()))
        except (orjson.JSONDecodeError, OSError):
            return None

    def _shards(self) -> list[dict[str, Any]]:
        marker = self.path / STATE_DIR / MARKER
        if not marker.exists():
            return []
        try:
            return list(orjson.loads(marker.read_bytes()).get("shards", []))
        except (orjson.JSONDecodeError, OSError):
            return []

    # -- rows -------------------------------------------------------------------------------
    def count_rows(self) -> int:
        return sum(int(s["rows"]) for s in self._shards())

    def rows(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Committed rows [offset, offset+limit), in commit order (images as {bytes, path})."""
        rows: list[dict[str, Any]] = []
        start = 0
        for shard in self._shards():
            n = int(shard["rows"])
            if start + n <= offset:
                start += n
                continue
            skip = max(0, offset - start)
            seen = 0
            for batch in pq.ParquetFile(self.path / STATE_DIR / shard["file"]).iter_batches(batch_size=256):
                if seen + batch.num_rows <= skip:
                    seen += batch.num_rows
                    continue
                lo = max(0, skip - seen)
                rows.extend(batch.slice(lo, limit - len(rows)).to_pylist())
                seen += batch.num_rows
                if len(rows) >= limit:
                    return rows
            start += n
        return rows

    def iter_batches(self, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator[Any]:
        """Committed rows as Arrow record batches, streaming (flat memory for any run size)."""
        for shard in self._shards():
            yield from pq.ParquetFile(self.path / STATE_DIR / shard["file"]).iter_batches(
                batch_size=batch_size, columns=columns)

    # -- failures ---------------------------------------------------------------------------
    def failures(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Dropped records with their reason, as committed (bytes past the marker are ignored)."""
        path = self.path / FAILURES
        if not path.exists():
            return []
        marker = self.path / STATE_DIR / MARKER
        committed = None
        if marker.exists():
            try:
                committed = int(orjson.loads(marker.read_bytes()).get("failures_bytes", 0))
            except (orjson.JSONDecodeError, OSError, ValueError):
                committed = None
        out: list[dict[str, Any]] = []
        with open(path, "rb") as fh:
            data = fh.read(committed) if committed is not None else fh.read()
        for i, line in enumerate(data.splitlines()):
            if i < offset:
                continue
            if len(out) >= limit:
                break
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out

    # -- the finished dataset -----------------------------------------------------------------
    def dataset(self) -> Any:
        """The finished `datasets.Dataset` (memory-mapped); raises NotARun before it is written."""
        if not self.finished:
            raise NotARun(f"{self.path} holds no finished dataset (run it to the end first)")
        import datasets

        return datasets.load_from_disk(str(self.path))


def open_run(path: str | Path) -> Run:
    """A run folder, in progress or finished; raises NotARun for a folder that holds neither."""
    run = Run(Path(path))
    if not run.started and not run.finished:
        raise NotARun(f"{path} is not a synthgen run folder")
    return run
