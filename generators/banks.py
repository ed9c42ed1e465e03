"""Named, weighted choices that generators draw from: difficulty levels and the like.

A bank is a list of entries with a `name` and a `weight`, loaded from a YAML data file as a
params default (so `synthgen generators` shows it and a job can replace it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from synthgen.engine.plugin import unique_names
from synthgen.generators import data


class Difficulty(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9_-]+$")
    label: str = Field(..., min_length=1)
    instruction: str = Field(..., min_length=1)
    weight: float = Field(1.0, gt=0)


def levels_from(value: object) -> object:
    """For params validators: a plain list of labels (the old form, e.g. ["易しい", "難しい"]) is
    accepted as levels named level-1, level-2, ... whose instruction is just the label."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [{"name": f"level-{i}", "label": v, "instruction": f"難しさは「{v}」の程度にすること。"}
                for i, v in enumerate(value, 1)]
    return value


def _unique_levels(levels: list[Difficulty]) -> list[Difficulty]:
    return unique_names(levels, "difficulty")


# A params field of difficulty levels: plain labels are accepted (an older spec), names must not repeat.
DifficultyLevels = Annotated[list[Difficulty], BeforeValidator(levels_from), AfterValidator(_unique_levels)]


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


class Balancer:
    """Deals k distinct names per call so counts track weights exactly (not a lottery): each pick
    goes to the entry furthest behind its share, ties broken by a seeded RNG. Deterministic for a
    seed, so inputs (and so record keys and resume) are stable."""

    def __init__(self, weights: dict[str, float], seed: int) -> None:
        self._weights = weights
        self._counts = dict.fromkeys(weights, 0)
        self._rng = random.Random(seed)

    def deal(self, k: int) -> list[str]:
        chosen: list[str] = []
        for _ in range(min(k, len(self._weights))):
            left = [n for n in self._weights if n not in chosen]
            best = min(left, key=lambda n: ((self._counts[n] + 1) / self._weights[n], self._rng.random()))
            self._counts[best] += 1
            chosen.append(best)
        return chosen
