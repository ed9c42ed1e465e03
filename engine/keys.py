"""Stable record keys: an input's identity is the generator, the run's seed and the item.

Keys make runs idempotent: resume skips what is written, so a dataset never holds two
records for one input. What *made* a record (generator version, prompt templates, models,
sampling) is its provenance, tracked per shard by the checkpoint store, so a changed prompt
is detected at resume instead of silently re-running the same inputs under new keys.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(obj).hexdigest()
    if hasattr(obj, "tobytes"):  # PIL images, numpy arrays
        return "sha256:" + hashlib.sha256(obj.tobytes()).hexdigest()
    raise TypeError(f"cannot key {type(obj).__name__}")


def record_key(generator: str, item: dict[str, Any], seed: int) -> str:
    payload = orjson.dumps(
        [generator, seed, item],
        default=_default, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
    )
    return hashlib.blake2b(payload, digest_size=10).hexdigest()


def seed_of(key: str) -> int:
    """The per-record RNG seed, from its key, so retries and resumes draw the same choices."""
    return int(key[:12], 16)


def row_key(record: str, index: int, total: int) -> str:
    return record if total == 1 else f"{record}:{index}"


def record_of(row: str) -> str:
    return row.split(":", 1)[0]
