"""Where images come from: local folders, parquet/jsonl tables, saved datasets and Hub datasets.

`iter_items` streams small JSON-able references (a file path, a URL, or a table row's
encoded bytes), never decoded pictures, so memory stays flat however large the source;
`load_image` turns one reference into a `NormalizedImage` inside `generate`, with the PIL
work off the event loop. Every source is walked in a fixed order, so record keys (and
`--resume`) are stable.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthgen import policy
from synthgen.generators.images.download import Downloader, DownloadLimits
from synthgen.generators.images.normalize import ImageRejected, Limits, NormalizedImage, normalize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
TABLE_BATCH = 64  # rows decoded from a table at a time: bounds memory, not throughput


class ImageInputParams(BaseModel):
    """Image source and normalisation settings shared by the image generators."""

    model_config = ConfigDict(extra="forbid")

    source: Annotated[str, policy.InputSource(hub_prefix="hf:")] = Field(..., min_length=1, description=(
        "a local folder of images, a .parquet/.jsonl file, a folder written by datasets.save_to_disk "
        "(e.g. a caption-translate run), or 'hf:owner/name' (anything datasets.load_dataset accepts)"))
    split: str = Field("train", description="split of a Hub dataset")
    image_column: str = Field("image", description="column holding an image (bytes, {bytes,path}, path or URL)")
    url_column: str | None = Field(None, description="column holding image URLs to download instead")
    limit: int | None = Field(None, ge=1, description="read at most this many source rows/files")
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS),
                                  description="file endings a folder source reads")
    max_side: int = Field(1024, ge=64, le=8192, description="longest side after normalising")
    min_side: int = Field(32, ge=1, description="inputs whose shortest side is smaller are dropped")
    max_pixels: int = Field(80_000_000, ge=4096, description="inputs with more pixels are dropped undecoded")
    max_aspect: float = Field(20.0, ge=1.0)
    max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(90, ge=30, le=100)
    download_timeout: float = Field(20.0, gt=0, le=600)
    download_attempts: int = Field(3, ge=1, le=10)
    download_concurrency: int = Field(32, ge=1, le=1024)

    @field_validator("source")
    @classmethod
    def _source_exists(cls, v: str) -> str:
        if v.startswith("hf:"):
            if len(v) <= 3:
                raise ValueError("'hf:' needs a dataset id, e.g. hf:owner/name")
            return v
        path = Path(v).expanduser()
        if not path.exists():
            raise ValueError(f"image source not found: {v} (for a Hub dataset write hf:owner/name)")
        if not (path.is_file() or path.is_dir()):  # a FIFO or a device would block or never end
            raise ValueError(f"image source {v} is not a regular file or folder")
        if path.is_file() and path.suffix.lower() not in (".parquet", ".jsonl", ".ndjson", ".json"):
            raise ValueError(f"unsupported source file {v}: use a folder, .parquet or .jsonl")
        return v

    def limits(self) -> Limits:
        return Limits(max_side=self.max_side, min_side=self.min_side, max_pixels=self.max_pixels,
                      max_bytes=self.max_bytes, max_aspect=self.max_aspect, format=self.image_format,
                      quality=self.jpeg_quality)

    def download_limits(self) -> DownloadLimits:
        return DownloadLimits(timeout=self.download_timeout, max_bytes=self.max_bytes,
                              attempts=self.download_attempts, concurrency=self.download_concurrency)


def source_kind(source: str) -> str:
    if source.startswith("hf:"):
        return "hub"
    path = Path(source).expanduser()
    if path.is_dir():
        return "saved" if (path / "dataset_info.json").exists() and (path / "state.json").exists() else "folder"
    return "parquet" if path.suffix.lower() == ".parquet" else "jsonl"


def iter_items(p: ImageInputParams, extra: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """References to the source's images in a fixed order; `extra` maps item keys to columns."""
    extra = extra or {}
    kind = source_kind(p.source)
    if kind != "hub":  # a REST job's worker reads only inside the operator's roots
        policy.check_readable(Path(p.source).expanduser())
        policy.require_regular(Path(p.source).expanduser())
    elif policy.current() is not None and not policy.HUB_DATASET.match(p.source[3:]):
        raise policy.InputNotAllowed("hf: must be followed by a Hub dataset id (owner/name)")
    if kind == "folder":
        if extra:
            raise ValueError(f"a folder source has no columns to read {sorted(extra.values())} from")
        rows: Iterator[dict[str, Any]] = _folder(Path(p.source).expanduser(), p.extensions)
    else:
        column = p.url_column or p.image_column
        columns = [column, *extra.values()]
        if kind == "parquet":
            table_rows = _parquet_rows(Path(p.source), columns)
        elif kind == "jsonl":
            table_rows = _jsonl_rows(Path(p.source))
        else:
            table_rows = _dataset_rows(p, columns, saved=kind == "saved")
        base = Path(p.source).expanduser().parent if kind in ("parquet", "jsonl") else None
        rows = _table_items(table_rows, column, extra, base, is_url=p.url_column is not None)
    for n, item in enumerate(rows):
        if p.limit is not None and n >= p.limit:
            return
        yield item


def _folder(root: Path, extensions: list[str]) -> Iterator[dict[str, Any]]:
    """A sorted walk, directory by directory: deterministic without listing the tree up front."""
    wanted = tuple(e.lower() for e in extensions)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(wanted):
                rel = os.path.relpath(os.path.join(folder, name), root)
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:  # bytes that are not UTF-8: this record fails, not the run
                    shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
                    yield {"file": shown, "bad_name": True}
                    continue
                yield {"file": rel}


def _parquet_rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    tops = list(dict.fromkeys(c.split(".", 1)[0] for c in columns))
    missing = [c for c in tops if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; it has {pf.schema_arrow.names}")
    for batch in pf.iter_batches(batch_size=TABLE_BATCH, columns=tops):
        yield from batch.to_pylist()


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    import orjson

    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: not JSON: {exc}") from None


def _dataset_rows(p: ImageInputParams, columns: list[str], *, saved: bool) -> Iterator[dict[str, Any]]:
    """A saved dataset (memory-mapped) or a streamed Hub dataset, images left encoded."""
    import datasets

    if saved:
        ds: Any = datasets.load_from_disk(p.source)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[p.split]
    else:
        ds = datasets.load_dataset(p.source[3:], split=p.split, streaming=True)
    tops = list(dict.fromkeys(c.split(".", 1)[0] for c in columns))
    names = list(ds.features) if ds.features is not None else None
    if names is not None:
        missing = [c for c in tops if c not in names]
        if missing:
            raise ValueError(f"{p.source}: no column(s) {missing}; it has {names}")
        ds = ds.select_columns(tops)
        for name in tops:
            if isinstance(ds.features[name], datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
    if saved:
        for batch in ds.iter(batch_size=TABLE_BATCH):
            keys = list(batch)
            for i in range(len(batch[keys[0]])):
                yield {k: batch[k][i] for k in keys}
    else:
        yield from ds


def _table_items(rows: Iterator[dict[str, Any]], column: str, extra: dict[str, str], base: Path | None,
                 *, is_url: bool) -> Iterator[dict[str, Any]]:
    for index, row in enumerate(rows):
        item: dict[str, Any] = {"row": index, **_image_ref(column_value(row, column), base, is_url=is_url)}
        for key, col in extra.items():
            item[key] = column_value(row, col)
        yield item


def column_value(row: dict[str, Any], column: str) -> Any:
    """`a.b` reads key b of struct column a (e.g. `captions_ja.detailed`)."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _image_ref(value: Any, base: Path | None, *, is_url: bool) -> dict[str, Any]:
    if isinstance(value, dict):  # the Image feature's {bytes, path}
        if value.get("bytes"):
            return {"image": bytes(value["bytes"])}
        value = value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return {"image": bytes(value)}
    if hasattr(value, "save") and hasattr(value, "size"):  # a decoded PIL image (features unknown upstream)
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return {"image": buf.getvalue()}
    if not isinstance(value, str) or not value.strip():
        return {"missing": True}
    value = value.strip()
    if is_url or value.startswith(("http://", "https://")):
        return {"url": value}
    if value.startswith("data:"):
        try:
            return {"image": base64.b64decode(value.split(",", 1)[1], validate=True)}
        except (ValueError, IndexError):
            return {"missing": True}
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return {"path": str(path)}


def describe(item: dict[str, Any], source: str) -> str:
    """Where a record's image came from, for the dataset row."""
    if "file" in item:
        return item["file"]
    if "url" in item:
        return item["url"]
    if "path" in item:
        return item["path"]
    return f"{source}#row={item.get('row')}"


async def load_image(item: dict[str, Any], p: ImageInputParams, downloader: Downloader | None) -> NormalizedImage:
    """Fetch and normalise one referenced image; raises a Skip subclass with a reason."""
    limits = p.limits()
    if "image" in item:
        return await asyncio.to_thread(normalize, item["image"], limits)
    if "url" in item:
        if downloader is None:
            raise ImageRejected("download_unavailable", "this generator was run without a downloader")
        data = await downloader.fetch(item["url"])
        return await asyncio.to_thread(normalize, data, limits)
    if item.get("bad_name"):
        raise ImageRejected("image_file_name_not_utf8", item["file"])
    if "file" in item or "path" in item:
        path = Path(p.source).expanduser() / item["file"] if "file" in item else Path(item["path"])
        active = policy.current()
        timeout = active.read_timeout_s if active else READ_TIMEOUT_S
        try:
            data = await asyncio.wait_for(asyncio.to_thread(_read_file, path, limits), timeout)
        except TimeoutError:
            raise ImageRejected("image_read_timeout", f"{path.name}: no data within {timeout:g}s") from None
        return await asyncio.to_thread(normalize, data, limits)
    raise ImageRejected("missing_image", f"row {item.get('row')} has no image")


READ_TIMEOUT_S = 30.0


def _read_file(path: Path, limits: Limits) -> bytes:
    """A regular file's bytes, the size cap enforced while reading; FIFOs and devices refused
    without blocking, paths outside the roots refused under a worker's policy."""
    try:
        return policy.open_regular(path, limits.max_bytes)
    except policy.InputNotAllowed:
        raise ImageRejected("image_path_not_allowed", path.name) from None
    except policy.NotRegularFile:
        raise ImageRejected("image_not_regular_file", path.name) from None
    except policy.FileTooLarge as exc:
        raise ImageRejected("image_too_large", f"{path.name}: {exc}") from None
    except FileNotFoundError:
        raise ImageRejected("image_file_missing", path.name) from None
    except IsADirectoryError:
        raise ImageRejected("image_file_missing", f"{path.name} is a folder") from None
    except PermissionError:
        raise ImageRejected("image_file_unreadable", path.name) from None
    except OSError as exc:
        raise ImageRejected("image_file_unreadable", f"{path.name}: {exc.strerror or type(exc).__name__}") from None


def _read_and_normalize(path: Path, limits: Limits) -> NormalizedImage:
    return normalize(_read_file(path, limits), limits)
