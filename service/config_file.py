"""Build a JobSpec from a config file, `--set` overrides and flags: the CLI's only parsing."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from synthgen.spec import DEFAULT_ROLE, JobSpec

SPEC_FIELDS = set(JobSpec.model_fields)


def read_config(path: Path) -> dict[str, Any]:
    """A TOML or YAML file shaped like the job spec (`roles`, `params`, `n`, ...)."""
    if not path.exists():
        raise ValueError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a table/mapping")
    return data


def apply_set(data: dict[str, Any], assignment: str, roles: tuple[str, ...]) -> None:
    """`writer.temperature=0.2`, `default.max_tokens=512`, `params.turns=3`, `n=50`.

    A first segment naming a role (or `default`) is short for `roles.<role>`; values are
    parsed as YAML scalars so numbers, booleans and lists arrive typed.
    """
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ValueError(f"--set has an empty key: {assignment!r}")
    if parts[0] in (*roles, DEFAULT_ROLE):
        parts = ["roles", *parts]
    if parts[0] not in SPEC_FIELDS:
        raise ValueError(f"--set {dotted}: unknown key {parts[0]!r} (roles: {', '.join((DEFAULT_ROLE, *roles))}; "
                         f"or params.*, n, seed, ...)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {part!r} is not a table")
    node[parts[-1]] = value


def build_spec(generator: str, roles: tuple[str, ...], *, config: Path | None, sets: list[str],
               flags: dict[str, Any], base_url: str | None, model: str | None, api_key: str | None) -> JobSpec:
    data = read_config(config) if config else {}
    data["generator"] = generator
    if base_url or model or api_key:
        default = data.setdefault("roles", {}).setdefault(DEFAULT_ROLE, {})
        for key, value in (("base_url", base_url), ("model", model), ("api_key", api_key)):
            if value:
                default[key] = value
        if base_url:
            default.setdefault("engine", "openai")
            for role_cfg in data["roles"].values():  # --base-url points every role at one server
                role_cfg["base_url"] = base_url
                if model:
                    role_cfg["model"] = model
    for assignment in sets:
        apply_set(data, assignment, roles)
    data.update({k: v for k, v in flags.items() if v is not None})
    return JobSpec.model_validate(data)
