"""Named, weighted choices that generators draw from: difficulty levels and the like.

A bank is a list of entries with a `name` and a `weight`, loaded from a YAML data file as a
params default (so `synthgen generators` shows it and a job can replace it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from synthgen.generators import data


class Difficulty(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9_-]+$")
    label: str = Field(..., min_length=1)
    instruction: str = Field(..., min_length=1)
    weight: float = Field(1.0, gt=0)


def difficulties(kind: str) -> list[Difficulty]:
    """The bundled levels for `kind` ('text' or 'image') from data/difficulties.yaml."""
    return [Difficulty.model_validate(row) for row in data.load("difficulties.yaml")[kind]]


W = TypeVar("W", bound=BaseModel)


def draw(entries: Sequence[W], rng: random.Random) -> W:
    """One entry by weight (`weight` attribute)."""
    return rng.choices(list(entries), [getattr(e, "weight") for e in entries])[0]  # noqa: B009


def by_name(entries: Sequence[W], name: str) -> W:
    for entry in entries:
        if getattr(entry, "name") == name:  # noqa: B009
            return entry
    raise KeyError(name)
