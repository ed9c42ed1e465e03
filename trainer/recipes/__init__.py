"""The seeds' training recipes as shipped configs, and their tiny CPU stand-ins.

Each `<name>.yaml` here is a real `synthgen train --config` file (real model ids, the seed's stages,
learning rates, batch sizes, resolutions). `tiny(name, out)` writes a runnable miniature of it:
randomly initialised models of the same architecture families (CLIP / SigLIP / ConvNeXt towers;
Llama, GPT-2, Mixtral or Qwen2-MoE LMs), a tiny dataset of the same format for every source (LLaVA
JSON stays LLaVA JSON, a synthgen folder stays a folder, text-only sources stay text-only), the same
stages with 2-3 steps each, and `out/config.yaml`:

    python -m synthgen.trainer.recipes list
    python -m synthgen.trainer.recipes tiny seed001_convllava_jp /tmp/convllava
    synthgen train --config /tmp/convllava/config.yaml

What the miniature cannot keep on a CPU (DeepSpeed, 8-bit AdamW, bf16) it changes, and says so
in `out/tiny_notes.json`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Recipe:
    name: str
    seeds: tuple[str, ...]
    vision: str  # stand-in tower family: clip | siglip | convnext
    lm: str  # stand-in LM family: llama | gpt2 | mixtral | qwen2_moe | remote (a Mixtral shipped as its own code)
    text_only: tuple[str, ...] = ()  # source paths that hold text-only rows (persona-qa)
    mixed: tuple[str, ...] = field(default=())  # source paths whose stand-in mixes text rows into image rows

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.yaml"


RECIPES = {r.name: r for r in (
    Recipe("seed000_llava_tinyllama", ("000",), vision="clip", lm="llama"),
    Recipe("seed001_convllava_jp", ("001",), vision="convnext", lm="gpt2"),
    Recipe("seed002_llama3v", ("002",), vision="siglip", lm="llama"),
    Recipe("seed003_tanuki_vision", ("003", "004"), vision="siglip", lm="remote",
           text_only=("runs/persona-qa",), mixed=("runs/category-recaption",)),
)}


def names() -> list[str]:
    return sorted(RECIPES)


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"no recipe {name!r}; shipped: {', '.join(names())}")
    return RECIPES[name]


def load(name: str) -> dict[str, Any]:
    """The recipe as a config mapping (validate with TrainConfig.model_validate)."""
    return yaml.safe_load(get(name).path.read_text(encoding="utf-8"))


def tiny(name: str, out: Path, steps: int = 2, lm_family: str | None = None) -> Path:
    """Write the recipe's CPU miniature under `out` and return its config path."""
    from synthgen.trainer import smoke

    recipe = get(name)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(load(name))
    notes: list[str] = []
    model = cfg["model"]
    notes.append(f"model.vision {model['vision']} -> random tiny {recipe.vision}")
    notes.append(f"model.lm {model['lm']} -> random tiny {lm_family or recipe.lm}")
    corpus = smoke.shapes_corpus() + [q + a for q, a in smoke.TEXT_QA] + ["詳しくは"] * 3
    if recipe.vision == "convnext":
        smoke.save_vision(out / "vision", "convnext", image_size=64, hidden=8, layers=2)
        if model.get("image_size"):
            notes.append(f"model.image_size {model['image_size']} -> 64")
            model["image_size"] = 64
        size = 64
    else:
        smoke.save_vision(out / "vision", recipe.vision)
        size = 32
    family = lm_family or recipe.lm
    if family == "remote":  # like Tanuki-8x8B: an MoE whose classes live in the checkpoint (trust_remote_code)
        smoke.save_remote_code_lm(out / "lm", corpus, name="tanuki")
    else:
        smoke.save_lm(out / "lm", corpus, family=family)
    model["vision"], model["lm"] = str(out / "vision"), str(out / "lm")
    model.pop("attn_implementation", None)
    if model.get("trust_remote_code") and family != "remote":
        notes.append("model.trust_remote_code kept, though this stand-in is a transformers class")

    made: dict[str, dict[str, Any]] = {}

    def stand_in(src: dict[str, Any]) -> dict[str, Any]:
        key = src["path"]
        if key not in made:
            k = len(made)
            if key.endswith((".json", ".jsonl")):
                path = smoke.save_llava_json(out / "data" / f"source{k}", 8, seed=100 + k, size=size)
                made[key] = {"path": str(path), "image_root": str(path.parent)}
            elif key in recipe.text_only:
                import datasets

                rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in smoke.TEXT_QA]
                datasets.Dataset.from_dict({"messages": rows * 2}).save_to_disk(str(out / "data" / f"source{k}"))
                made[key] = {"path": str(out / "data" / f"source{k}")}
            else:
                path = smoke.save_shapes_dataset(out / "data" / f"source{k}", 8, seed=100 + k, size=size,
                                                 text_only=3 if key in recipe.mixed else 0)
                made[key] = {"path": str(path)}
        return {**{k: v for k, v in src.items() if k not in ("path", "image_root", "limit")}, **made[key]}

    data = cfg.setdefault("data", {})
    data["sources"] = [stand_in(s) for s in data.get("sources", [])]
    data.update(max_length=128, num_workers=0)
    for stage in cfg["stages"]:
        if stage.get("sources"):
            stage["sources"] = [stand_in(s) for s in stage["sources"]]
        stage.update(batch_size=2, grad_accum=1, max_steps=steps)
        if stage.get("optimizer") == "adamw_8bit":
            notes.append(f"stage {stage['name']}: optimizer adamw_8bit -> adamw (8-bit AdamW needs a CUDA GPU)")
            stage["optimizer"] = "adamw"
        if stage.get("train_lm") == "lora":
            stage["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    if cfg.get("deepspeed"):
        notes.append(f"deepspeed {cfg['deepspeed']} -> none (DeepSpeed ZeRO needs CUDA GPUs; the ZeRO-3 "
                     "empty-projector guard still checks every save)")
        cfg["deepspeed"] = None
    if cfg.get("precision", "bf16") != "fp32":
        notes.append(f"precision {cfg.get('precision', 'bf16')} -> fp32")
    cfg.pop("eval", None)
    cfg.pop("push_to_hub", None)
    cfg.update(precision="fp32", output_dir=str(out / "model"), run_dir=str(out / "run"),
               feature_cache_dir=str(out / "feature_cache"), report_to=[], logging_steps=1, save_steps=100)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (out / "tiny_notes.json").write_text(json.dumps({"recipe": name, "seeds": list(recipe.seeds), "changes": notes,
                                                      "sources": made}, ensure_ascii=False, indent=1),
                                         encoding="utf-8")
    return path
