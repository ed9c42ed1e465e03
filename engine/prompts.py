"""Jinja2 prompt templates under `prompts/<generator>/`, loaded once and hashed.

The hash of each template is part of a run's provenance (checkpoint store, manifest), so a
resume after a prompt edit is noticed instead of silently mixing old and new outputs.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2


class Prompts:
    def __init__(self, folder: str | Path | None) -> None:
        self._templates: dict[str, jinja2.Template] = {}
        self.hashes: dict[str, str] = {}
        self._static: dict[str, str] = {}
        if folder is None:
            return
        root = Path(folder) if isinstance(folder, Path) else Path(str(files("synthgen.prompts") / folder))
        if not root.is_dir():
            raise FileNotFoundError(f"prompt folder not found: {root}")
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False,
            trim_blocks=True, lstrip_blocks=True,
        )
        for path in sorted(root.glob("*.j2")):
            source = path.read_text(encoding="utf-8")
            self._templates[path.stem] = env.from_string(source)
            self.hashes[path.stem] = hashlib.sha256(source.encode()).hexdigest()[:16]

    def render(self, name: str, **variables: Any) -> str:
        if not variables and name in self._static:
            return self._static[name]  # a template without variables renders the same every record
        try:
            template = self._templates[name]
        except KeyError:
            raise KeyError(f"no prompt template {name!r}; have {sorted(self._templates)}") from None
        text = template.render(**variables).strip()
        if not variables:
            self._static[name] = text
        return text
