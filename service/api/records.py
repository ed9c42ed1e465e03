"""Preview a job's rows through the engine's run API, images (`{"bytes", "path"}` structs)
replaced by a reference the caller turns into a URL."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from synthgen.engine.runs import Run


def count_rows(out: Path) -> int:
    return Run(out).count_rows()


def read_rows(out: Path, offset: int, limit: int) -> list[dict[str, Any]]:
    return Run(out).rows(offset, limit)


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
