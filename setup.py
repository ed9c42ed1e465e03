"""Package discovery for the card's top-level folders, all under the `synthgen` namespace.

pyproject.toml maps each folder to `synthgen.<folder>`; this file only lists their
sub-packages so that a new sub-folder with an `__init__.py` ships without editing config.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"synthgen": "synthgen", "generators": "synthgen.generators", "service": "synthgen.service",
         "personas": "synthgen.personas", "prompts": "synthgen.prompts", "trainer": "synthgen.trainer",
         "evaluator": "synthgen.evaluator"}


def _packages() -> list[str]:
    here = Path(__file__).parent
    found = []
    for folder, name in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            found.append(".".join([name, *rel.parts]) if rel.parts else name)
    return found


setup(packages=_packages())
