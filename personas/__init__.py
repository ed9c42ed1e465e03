"""Personas that steer generation: a bundled Japanese set and loaders for public persona sets.

`load_personas()` is the entry point; `synthgen.personas.build` regenerates the bundled file.
"""

from synthgen.personas.loaders import Persona, iter_personas, load_personas

__all__ = ["Persona", "iter_personas", "load_personas"]
