"""Who asks: a persona shown to the writer as a few of its traits, not its whole profile.

Handing a model every trait at once (occupation, age, prefecture, two hobbies) makes it cram
them all into one question, which reads like a form letter; people bring one or two sides of
themselves to a question. So each record draws a subset of the traits with its own RNG: the
occupation most of the time (it carries the persona's knowledge and problems), plus at most
two of age, region, work description and interests. Personas from other sets (Persona-Hub,
FinePersonas) are one free sentence with no fields; they are passed through as written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# The builtin set's fields, and how each reads as a phrase.
TRAITS = ("occupation", "description", "age_band", "region", "interests")


@dataclass(frozen=True)
class Asker:
    """The persona as one record uses it: its id, its full text and the traits shown."""

    id: str
    text: str
    traits: tuple[str, ...]
    shown: str


def pick_traits(meta: dict[str, Any], rng: random.Random) -> tuple[str, ...]:
    """One to three traits, never all of them; the occupation in four draws of five."""
    have = [t for t in TRAITS if meta.get(t)]
    if "occupation" not in have:
        return ()
    others = [t for t in have if t != "occupation"]
    chosen = ["occupation"] if rng.random() < 0.8 or not others else []
    extra = rng.randint(0 if chosen else 1, min(2, len(others)))
    chosen += rng.sample(others, extra)
    return tuple(t for t in TRAITS if t in chosen)  # a fixed order reads better than a drawn one


def phrase(meta: dict[str, Any], traits: tuple[str, ...]) -> str:
    """The chosen traits as one Japanese line, e.g. 「長野県に住む、40代の小学校教諭。趣味は登山。」."""
    who = meta.get("occupation", "") if "occupation" in traits else "人"
    front = []
    if "region" in traits:
        front.append(f"{meta['region']}に住む")
    if "age_band" in traits:
        front.append(f"{meta['age_band']}の")
    text = "".join(front) + who + "。"
    if "description" in traits:
        text += str(meta["description"]).rstrip("。") + "。"
    if "interests" in traits:
        interests = meta["interests"]
        text += "趣味は" + ("と".join(interests) if isinstance(interests, list) else str(interests)) + "。"
    return text


def asker(persona: Any, rng: random.Random) -> Asker:
    """A `synthgen.personas.Persona` drawn for one record, reduced to the traits it will show."""
    traits = pick_traits(persona.meta, rng)
    shown = phrase(persona.meta, traits) if traits else persona.text
    return Asker(id=persona.id, text=persona.text, traits=traits, shown=shown)
