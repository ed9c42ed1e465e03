"""The one place that maps the repository's top-level folders to packages under `synthgen`.

The folders stay at the repository's top (as the card lays them out) but all import as
`synthgen.*`, so installing synthgen never puts generic names like `service` into
site-packages. Sub-packages are found by their `__init__.py`, so a new sub-folder ships
without editing config; a new top-level folder is one line in ROOTS. The Dockerfile copies
the whole tree and installs it, so it needs no list of its own.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"synthgen": "synthgen", "engine": "synthgen.engine", "generators": "synthgen.generators",
         "service": "synthgen.service",
         "personas": "synthgen.personas", "prompts": "synthgen.prompts", "trainer": "synthgen.trainer",
         "evaluator": "synthgen.evaluator",
         "publish": "synthgen.publish",
         "quality": "synthgen.quality"}


def _packages() -> list[str]:
    here = Path(__file__).parent
    found = []
    for folder, name in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            found.append(".".join([name, *rel.parts]) if rel.parts else name)
    return found


setup(packages=_packages(), package_dir={name: folder for folder, name in ROOTS.items()})
