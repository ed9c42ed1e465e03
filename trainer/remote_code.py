"""LMs that ship their own modeling code (Tanuki-8x8B: `trust_remote_code`) inside a LLaVA.

transformers' LLaVA classes build their language model with `AutoModel.from_config(text_config)`,
which knows only transformers' own model types. So (1) at assembly the LM's config and model classes
are registered with the Auto classes, (2) when a stage is saved, the LM's code files are copied next
to the weights (the text config keeps its `auto_map`), and (3) `inference.load_model(path,
trust_remote_code=True)` imports those files from the saved folder and registers them again before
loading. Without trust_remote_code such a folder is refused with a message that says why.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


def is_remote(config) -> bool:
    return bool(getattr(config, "auto_map", None)) and type(config).__module__.startswith("transformers_modules")


def register_lm(lm) -> None:
    """Make a remote-code LM's classes known to AutoConfig / AutoModel / AutoModelForCausalLM."""
    cfg = lm.config
    if not is_remote(cfg):
        return
    base = type(getattr(lm, lm.base_model_prefix))
    if getattr(base, "config_class", None) is not type(cfg):  # remote CausalLM around a stock base model
        base = type(f"{type(cfg).__name__.removesuffix('Config')}BaseModel", (base,), {"config_class": type(cfg)})
    AutoConfig.register(cfg.model_type, type(cfg), exist_ok=True)
    AutoModel.register(type(cfg), base, exist_ok=True)
    AutoModelForCausalLM.register(type(cfg), type(lm), exist_ok=True)


def copy_code(model, out: Path) -> list[str]:
    """Copy the text model's code files into a saved folder (so its auto_map resolves there)."""
    text = model.config.text_config
    if not is_remote(text):
        return []
    dirs = {Path(inspect.getsourcefile(type(text))).parent,
            Path(inspect.getsourcefile(type(model.model.language_model))).parent}
    copied = []
    for d in sorted(dirs):
        for f in sorted(d.glob("*.py")):
            if f.name != "__init__.py":
                shutil.copyfile(f, Path(out) / f.name)
                copied.append(f.name)
    return copied


def register_saved(path: Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    """Before loading a saved LLaVA whose LM is remote code: import its classes from the folder."""
    text = config.get("text_config") or {}
    auto_map = text.get("auto_map")
    if not auto_map or text.get("model_type") in CONFIG_MAPPING:
        return
    if not trust_remote_code:
        raise ValueError(f"{path}: its language model ({text.get('model_type')}) runs code shipped in the folder "
                         f"({', '.join(sorted(set(v.split('.')[0] + '.py' for v in auto_map.values())))}); "
                         "read it, then load with trust_remote_code=True")
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cfg_cls = get_class_from_dynamic_module(auto_map["AutoConfig"], str(path))
    AutoConfig.register(text["model_type"], cfg_cls, exist_ok=True)
    if "AutoModel" in auto_map:
        AutoModel.register(cfg_cls, get_class_from_dynamic_module(auto_map["AutoModel"], str(path)), exist_ok=True)
