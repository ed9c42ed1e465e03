"""Preview a job's rows straight from its committed checkpoint shards.

Only shards the progress marker names are read, so a preview never shows a row a crash
would later discard; the finished dataset is built from the same shards, so a preview
of a finished job shows the dataset's rows in order. Images (`{"bytes", "path"}` structs)
are replaced by a reference the caller turns into a URL.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from synthgen.engine.checkpoint import MARKER, STATE_DIR


def _shards(out: Path) -> list[dict[str, Any]]:
    marker = out / STATE_DIR / MARKER
    if not marker.exists():
        return []
    try:
        return list(orjson.loads(marker.read_bytes()).get("shards", []))
    except (orjson.JSONDecodeError, OSError):
        return []


def count_rows(out: Path) -> int:
    return sum(int(s["rows"]) for s in _shards(out))


def read_rows(out: Path, offset: int, limit: int) -> list[dict[str, Any]]:
    """Rows [offset, offset+limit) across the committed shards, in commit order."""
    rows: list[dict[str, Any]] = []
    start = 0
    for shard in _shards(out):
        n = int(shard["rows"])
        if start + n <= offset:
            start += n
            continue
        skip = max(0, offset - start)
        pf = pq.ParquetFile(out / STATE_DIR / shard["file"])
        seen = 0
        for batch in pf.iter_batches(batch_size=256):
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


def _is_image(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"bytes", "path"} and (
        isinstance(value["bytes"], bytes | bytearray) or value["bytes"] is None)


def swap_images(value: Any, ref: Any, found: list[dict[str, Any]] | None = None) -> Any:
    """Replace each image struct by `ref(k)` (k = its order in the row), depth first."""
    found = [] if found is None else found
    if _is_image(value):
        found.append(value)
        return ref(len(found) - 1)
    if isinstance(value, dict):
        return {k: swap_images(v, ref, found) for k, v in value.items()}
    if isinstance(value, list):
        return [swap_images(v, ref, found) for v in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return value


def images_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    swap_images(row, lambda k: k, found)
    return found


def image_bytes(out: Path, index: int, k: int) -> tuple[bytes, str] | None:
    rows = read_rows(out, index, 1)
    if not rows:
        return None
    imgs = images_of(rows[0])
    if k >= len(imgs) or not imgs[k]["bytes"]:
        return None
    data = bytes(imgs[k]["bytes"])
    return data, _mime(data)


def _mime(data: bytes) -> str:
    from PIL import Image

    try:
        fmt = Image.open(io.BytesIO(data)).format or ""
    except Exception:
        return "application/octet-stream"
    return Image.MIME.get(fmt.upper(), "application/octet-stream")
