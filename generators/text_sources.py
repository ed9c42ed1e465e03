"""Text to draw: rows of a Hub dataset or a local file, cut into passages of a set length.

Both paths stream (`datasets.load_dataset(..., streaming=True)`), so a Wikipedia dump is
read only as far as the run needs, and the same code reads a Hub id, a local folder of
data files or one jsonl/json/parquet/csv/txt file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthgen import policy

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# A sentence ends at 。！？!? (with any closing brackets) or at a line break.
_SENTENCE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+[」』）)】〕]*|\n|$)")


def open_rows(source: str, *, split: str = "train", config: str | None = None) -> Iterator[dict[str, Any]]:
    """Stream the rows of `source`: a local file, a local folder of data files or a Hub id."""
    import datasets

    path = Path(source).expanduser()
    if policy.current() is not None:  # a REST job: local paths arrive absolute, checked at POST
        if path.is_absolute():
            policy.check_readable(path)
            policy.require_regular(path)
        elif not policy.HUB_DATASET.match(source):
            raise policy.InputNotAllowed("text source must be a path under the data root or a Hub dataset id")
        else:
            path = Path("/nonexistent-hub-id")  # never look for a Hub id on the worker's disk
    if path.is_file():
        builder = LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"unsupported text file {path.name!r}; use one of {', '.join(sorted(LOCAL_BUILDERS))}")
        ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, streaming=True)
    elif path.is_dir() or HUB_ID.match(source):
        # A folder or a Hub id: the datasets library picks the builder from the files it finds.
        ds = datasets.load_dataset(str(path) if path.is_dir() else source, name=config, split=split, streaming=True)
    else:
        raise FileNotFoundError(f"text source {source!r} is neither a file, a folder nor a Hub dataset id")
    yield from ds


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def passages(text: str, *, target_chars: int, max_chars: int) -> Iterator[str]:
    """Whole sentences packed up to about `target_chars`; a sentence over `max_chars` is cut."""
    current = ""
    for sentence in sentences(text):
        while len(sentence) > max_chars:
            if current:
                yield current
                current = ""
            yield sentence[:max_chars]
            sentence = sentence[max_chars:]
        if current and len(current) + len(sentence) > max_chars:
            yield current
            current = ""
        current = f"{current}\n{sentence}" if current and _paragraph_break(current) else current + sentence
        if len(current) >= target_chars:
            yield current
            current = ""
    if current:
        yield current


def _paragraph_break(current: str) -> bool:
    return not current.endswith(("。", "！", "？", "」", "』"))


def iter_passages(source: str, *, column: str = "text", split: str = "train", config: str | None = None,
                  target_chars: int = 200, min_chars: int = 40, max_chars: int = 400,
                  skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
    """`{"row": i, "part": j, "passage": ...}` for every passage of the chosen column."""
    for i, row in enumerate(open_rows(source, split=split, config=config)):
        if i < skip_rows:
            continue
        if max_rows is not None and i >= skip_rows + max_rows:
            return
        if column not in row:
            raise ValueError(f"text source {source!r} has no column {column!r}; columns: {', '.join(row)}")
        value = row[column]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"column {column!r} of {source!r} holds {type(value).__name__}, not text")
        for j, passage in enumerate(passages(value, target_chars=target_chars, max_chars=max_chars)):
            if len(passage) >= min_chars:
                yield {"row": i, "part": j, "passage": passage}
