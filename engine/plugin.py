"""The generator plugin contract, and the registry that finds plugins by entry point.

A generator is a plain value, not a class to subclass: a params model, the roles it asks
for, the features its rows have, a function that streams inputs and an async function
that turns one input into rows. The engine owns everything else (retries, concurrency,
checkpoints, keys), so a plugin reads like the recipe it implements, and the same
`generate` runs unchanged in one process or inside a Ray `map_batches` actor.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    import datasets

    from synthgen.engine.prompts import Prompts
    from synthgen.engine.roles import Role

ENTRY_POINT_GROUP = "synthgen.generators"
# The params model of one generator: `Generator[Params]` makes `ctx.params` a `Params` in its plugin.
P = TypeVar("P", bound=BaseModel)


class Skip(Exception):
    """Raised by a plugin to drop one record for a quality reason; counted, never fatal.

    `reason` should be a short stable slug (e.g. `not_japanese`) so failures group well;
    `detail` may carry the offending text.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class RecordContext(Generic[P]):
    """What one record's generation sees: its key, a seeded RNG, the roles and the prompts."""

    key: str
    seed: int
    params: P
    roles: Mapping[str, Role]
    prompts: Prompts
    resources: Any = None
    _rng: random.Random | None = field(default=None, init=False, repr=False)

    @property
    def rng(self) -> random.Random:
        """A per-record RNG seeded from the key, so a retried or resumed record draws the same."""
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng

    def role(self, name: str) -> Role:
        return self.roles[name]


@dataclass(frozen=True)
class InputContext(Generic[P]):
    """What an input stream sees: the params, the run's seed, and where local files resolve."""

    params: P
    seed: int


@dataclass(frozen=True)
class Generator(Generic[P]):
    name: str
    version: str
    description: str
    params_model: type[P]
    roles: tuple[str, ...]
    # What it reads, in words, for `synthgen generators` and the API.
    reads: str
    # Features of a row (without the engine's own `key` column), given the params.
    features: Callable[[P], datasets.Features]
    # An endless or finite stream of JSON-able input items; the engine keys and counts them.
    inputs: Callable[[InputContext[P]], Iterator[dict[str, Any]]]
    # One input -> rows (usually one). Raise Skip to drop it with a reason.
    generate: Callable[[dict[str, Any], RecordContext[P]], Awaitable[list[dict[str, Any]]]]
    # Folder under prompts/ holding this generator's Jinja2 templates.
    prompt_dir: str | Path | None = None
    # Run-wide resources (a browser pool, an image downloader): an async context manager
    # built from the params, entered once per run; its value is `RecordContext.resources`.
    resources: Callable[[P], AbstractAsyncContextManager[Any]] | None = None

    def parse_params(self, raw: Mapping[str, Any]) -> P:
        return self.params_model.model_validate(dict(raw))

    def params_schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()


def unique_names(items: list[Any], what: str) -> list[Any]:
    """For params validators: named choices (tasks, categories) must not repeat, or weights and
    resume keys would silently merge two entries."""
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be unique: {names}")
    return items


class UnknownGenerator(LookupError):
    pass


def _load(ep: Any) -> Generator:
    gen = ep.load()
    if not isinstance(gen, Generator):
        raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a synthgen Generator")
    return gen


def broken() -> dict[str, str]:
    """Registered generators that fail to load, with the reason.

    Kept apart from `available()` so one third-party plugin with a missing dependency
    cannot take every other generator down with it.
    """
    bad: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            _load(ep)
        except Exception as exc:
            bad[ep.name] = f"{type(exc).__name__}: {exc}"
    return dict(sorted(bad.items()))


def available() -> dict[str, Generator]:
    """Generators registered under the `synthgen.generators` entry-point group that load."""
    found: dict[str, Generator] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = _load(ep)
        except Exception:
            continue
    return dict(sorted(found.items()))


def get(name: str) -> Generator:
    """Load one generator by name; its own import error is raised, not hidden."""
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in eps:
        known = ", ".join(sorted(available())) or "none"
        raise UnknownGenerator(f"unknown generator {name!r} (known: {known})")
    try:
        return _load(eps[name])
    except Exception as exc:
        raise UnknownGenerator(f"generator {name!r} is registered but failed to load: {exc}") from exc
