"""Persona sources: the bundled Japanese set, local files, and Hugging Face Hub datasets.

Persona-Hub rows carry the text under `persona` (or `input persona`), FinePersonas rows under
`persona` with optional `labels`; anything else names its column with `column=`. Every persona
gets a stable id (the source's own, or a hash of the text) because record keys, and so resumed
jobs, depend on it. Hub datasets are streamed, never downloaded whole: FinePersonas alone has
21M rows, and a job usually wants a few thousand.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import Any

from synthgen import policy

BUILTIN = "builtin"
TEXT_COLUMNS = ("persona", "input persona", "input_persona", "text")
ID_COLUMNS = ("id", "persona_id", "uuid")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# owner/name, optionally :config (the Hub's own naming rules, loosely).
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


@dataclass(frozen=True)
class Persona:
    """One persona: a stable `id`, its `text`, and whatever else the source row carried."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def builtin_path() -> Path:
    """Where the bundled set lies (a real file for regular and editable installs)."""
    return Path(str(files("synthgen.personas") / "data" / "personas_ja.jsonl"))


def load_personas(source: str | None = None, *, limit: int | None = None, column: str | None = None) -> list[Persona]:
    """The personas of `source`, at most `limit` of them, empty rows skipped.

    `source`: None or "builtin" (the bundled Japanese set); a local .jsonl/.json/.parquet/.csv
    file; or a Hub dataset id such as `argilla/FinePersonas-v0.1` or
    `proj-persona/PersonaHub:persona` (config after the colon; split "train").
    `column` names the text column; by default the first of TEXT_COLUMNS present is used.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return list(islice(iter_personas(source, column=column), limit))


def iter_personas(source: str | None = None, *, column: str | None = None) -> Iterator[Persona]:
    """Lazy form of `load_personas`, so a streamed Hub dataset is read only as far as needed."""
    if source in (None, "", BUILTIN):
        yield from _from_rows(_read_builtin(), column or "persona", BUILTIN)
        return
    assert source is not None
    path = Path(source).expanduser()
    if policy.current() is not None:  # a REST job: local paths arrive absolute, checked at POST
        if path.is_absolute():
            policy.check_readable(path)
            policy.require_regular(path)
        elif not _HUB_ID.match(source):
            raise policy.InputNotAllowed("persona source must be a path under the data root or a Hub dataset id")
        else:
            path = Path("/nonexistent-hub-id")  # never look for a Hub id on the worker's disk
    if path.is_file():
        yield from _from_rows(_read_file(path), column, str(path))
        return
    if path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise ValueError(f"persona file not found: {source} (nor is it a Hub dataset id like owner/name[:config])")
    yield from _from_rows(_read_hub(source), column, source)


def _read_builtin() -> Iterator[dict[str, Any]]:
    # Read through importlib.resources rather than a path so a zipped install works too.
    text = (files("synthgen.personas") / "data" / "personas_ja.jsonl").read_text(encoding="utf-8")
    return (json.loads(line) for line in text.splitlines() if line.strip())


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
        import polars as pl  # imported here: only file sources need it

        frame = pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
        return frame.iter_rows(named=True)
    raise ValueError(f"unsupported persona file type {suffix!r} (use one of {', '.join(FILE_SUFFIXES)})")


def _read_hub(source: str) -> Iterable[dict[str, Any]]:
    """`owner/name` or `owner/name:config`, streamed (split "train")."""
    import datasets  # imported here: the builtin set and local files must not pay for it

    repo, _, config = source.partition(":")
    return datasets.load_dataset(repo, config or None, split="train", streaming=True)


def _labels(value: Any) -> Any:
    """FinePersonas stores `labels` as a JSON list in a string; hand callers the list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _from_rows(rows: Iterable[dict[str, Any]], column: str | None, where: str) -> Iterator[Persona]:
    text_col = column
    for row in rows:
        if text_col is None:
            text_col = next((c for c in TEXT_COLUMNS if c in row), None)
            if text_col is None:
                raise ValueError(f"{where}: no persona column among {sorted(row)}; pass column= "
                                 f"(looked for {', '.join(TEXT_COLUMNS)})")
        if text_col not in row:
            raise ValueError(f"{where}: column {text_col!r} not found; available columns: {sorted(row)}")
        text = str(row.get(text_col) or "").strip()
        if not text:
            continue
        pid = next((str(row[c]) for c in ID_COLUMNS if row.get(c) not in (None, "")), None)
        meta = {k: (_labels(v) if k == "labels" else v) for k, v in row.items()
                if k != text_col and k not in ID_COLUMNS}
        yield Persona(id=pid or hashlib.sha1(text.encode("utf-8")).hexdigest()[:16], text=text, meta=meta)
