"""Data files of the generators (categories, caption styles, difficulty levels, chart themes).

Kept as YAML beside the code so a user can read and extend a bank without touching Python:
each generator loads its file as its params' default, and a job may pass its own list
instead. Shipped as package data (pyproject's `"*" = ["*.yaml", ...]` glob).
"""

from __future__ import annotations

import copy
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml


@cache
def _parsed(name: str) -> Any:
    # Parsed once: params defaults are built on every job POST and every params parse, and
    # YAML parsing was a fifth of the API's CPU under load.
    return yaml.safe_load((files("synthgen.generators.data") / name).read_text(encoding="utf-8"))


def load(name: str) -> Any:
    """A bundled data file, a fresh copy each call (callers may mutate what they get)."""
    return copy.deepcopy(_parsed(name))


MAX_BANK_BYTES = 1 << 20


def load_file(path: str | Path) -> Any:
    """A user's own YAML (or JSON, which YAML reads too) bank: a regular file of at most 1 MiB,
    read through the operator policy (so a REST job cannot name a file outside its roots)."""
    from synthgen.policy import open_regular

    try:
        raw = open_regular(Path(path).expanduser(), max_bytes=MAX_BANK_BYTES)
    except OSError as exc:
        raise ValueError(f"cannot read bank file {Path(path).name}: {exc}") from None
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"bank file {Path(path).name} is not YAML: {type(exc).__name__}") from None
