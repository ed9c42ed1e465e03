"""Persona sources: the bundled Japanese set, local files, and Hub datasets.

Persona-Hub rows carry the text under `persona` (or `input persona`), FinePersonas under
`persona`; anything else names its column. Every persona gets a stable id (the source's, or
a hash of the text) because record keys, and so resume, depend on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import Any

TEXT_COLUMNS = ("persona", "input persona", "input_persona", "text", "description")
ID_COLUMNS = ("id", "persona_id", "uuid")
BUILTIN = "builtin"


@dataclass(frozen=True)
class Persona:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def builtin_path() -> Path:
    return Path(str(files("synthgen.personas") / "data" / "personas_ja.jsonl"))


def load_personas(source: str | None = None, *, limit: int | None = None, column: str | None = None) -> list[Persona]:
    """All personas of a source (up to `limit`), empty rows skipped."""
    return list(islice(iter_personas(source, column=column), limit))


def iter_personas(source: str | None = None, *, column: str | None = None) -> Iterator[Persona]:
    if source in (None, "", BUILTIN):
        yield from _from_rows(_read_jsonl(builtin_path()), column or "persona", str(builtin_path()))
        return
    assert source is not None
    path = Path(source).expanduser()
    if path.exists():
        yield from _from_rows(_read_file(path), column, str(path))
        return
    if path.suffix in (".jsonl", ".json", ".parquet", ".csv") or source.startswith((".", "/", "~")):
        raise ValueError(f"persona file not found: {source}")
    yield from _from_rows(_read_hub(source), column, source)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _read_file(path: Path) -> Iterable[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return data
    if suffix in (".parquet", ".csv"):
        import polars as pl

        frame = pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path)
        return frame.iter_rows(named=True)
    raise ValueError(f"unsupported persona file type {suffix!r} (use .jsonl, .json, .parquet or .csv)")


def _read_hub(source: str) -> Iterator[dict[str, Any]]:
    """`owner/name` or `owner/name:config`, streamed so a 21M-row set is never downloaded whole."""
    import datasets

    repo, _, config = source.partition(":")
    stream = datasets.load_dataset(repo, config or None, split="train", streaming=True)
    return iter(stream)


def _from_rows(rows: Iterable[dict[str, Any]], column: str | None, where: str) -> Iterator[Persona]:
    text_col = column
    for row in rows:
        if text_col is None:
            text_col = next((c for c in TEXT_COLUMNS if c in row), None)
            if text_col is None:
                raise ValueError(f"{where}: no persona column among {sorted(row)}; pass column=")
        if text_col not in row:
            raise ValueError(f"{where}: column {text_col!r} not found; available: {sorted(row)}")
        text = str(row.get(text_col) or "").strip()
        if not text:
            continue
        pid = next((str(row[c]) for c in ID_COLUMNS if row.get(c) not in (None, "")), None)
        meta = {k: v for k, v in row.items() if k != text_col and k not in ID_COLUMNS}
        yield Persona(id=pid or hashlib.sha1(text.encode()).hexdigest()[:16], text=text, meta=meta)
