"""Training config: one pydantic model read from YAML or TOML, with `a.b=c` overrides.

Defaults follow LLaVA-1.5 / LLaVA-JP practice: stage 1 (projector only) lr 1e-3, batch 256
equivalent, no weight decay; stage 2 (projector + LM) lr 2e-5; cosine schedule, 3% warmup, one epoch.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    vision: str = Field(description="vision tower: Hub id or local path (CLIP, SigLIP, any ViT-style encoder)")
    lm: str | None = Field(None, description="causal LM: Hub id or local path")
    init_from: str | None = Field(None, description="an existing LLaVA checkpoint to continue from instead of vision+lm")
    vision_revision: str | None = None
    lm_revision: str | None = None
    projector_act: str = "gelu"
    vision_feature_layer: int | None = Field(None, description="default -2 (penultimate) for ViTs, -1 (last "
                                             "stage) for ConvNeXt")
    vision_feature_select_strategy: Literal["auto", "default", "full"] = "auto"
    image_token: str = "<image>"
    system_prompt: str | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = Field(False, description="run the LM's / tower's own modeling code (Tanuki needs it); "
                                    "the REST service allows it only where the server permits")
    image_aspect_ratio: Literal["resize", "pad", "anyres"] = Field(
        "resize", description="resize: the tower's own preprocessing; pad: pad to a square with the mean colour "
        "first (LLaVA-1.5); anyres: tiles on a grid of image_grid_pinpoints (LLaVA-NeXT)")
    image_grid_pinpoints: list[list[int]] | None = Field(
        None, description="anyres grid resolutions [[h, w], ...]; default: 1x1..3x1 tiles of the tower's size")
    image_size: int | None = Field(None, ge=32, description="input resolution for ConvNeXt towers (e.g. 768, 1024)")
    conv_extra_stage: bool = Field(False, description="ConvNeXt: add a 5th stage (ConvLLaVA), halving each side "
                                   "again: 768 px -> 12x12 = 144 image tokens")
    conv_extra_stage_depth: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _sources(self) -> ModelConfig:
        if self.init_from is None and self.lm is None:
            raise ValueError("model.lm is required unless model.init_from names a LLaVA checkpoint")
        return self


class SourceConfig(Strict):
    path: str = Field(description="datasets folder (save_to_disk), a published folder (card + parquet, as "
                                  "`synthgen push --local` writes), Hub dataset id, or LLaVA JSON file")
    config: str | None = Field(None, max_length=96, description="the dataset config of a Hub repo or published "
                                                                "folder that holds several (synthgen: one per generator)")
    format: Literal["auto", "synthgen", "llava_json"] = "auto"
    weight: float = Field(1.0, gt=0, description="sampling weight: copies of this source per epoch (0.5 = half)")
    split: str = "train"
    image_root: str | None = Field(None, description="folder that LLaVA JSON image paths are relative to")
    image_column: str = "image"
    messages_column: str = "messages"
    limit: int | None = Field(None, gt=0)


class DataConfig(Strict):
    sources: list[SourceConfig] = Field(default_factory=list, description="the stages' data unless a stage names its own")
    max_length: int = Field(2048, ge=16)
    packing: bool = False
    num_workers: int = Field(2, ge=0)
    prefetch_factor: int = Field(4, ge=1)
    seed: int = 0
    record_seen: bool = Field(True, description="log which rows each stage trained on (run_dir/data/<stage>.seen*)")


class LoraConfig(Strict):
    r: int = Field(64, ge=1)
    alpha: int = 128
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class StageConfig(Strict):
    name: str
    train_projector: bool = True
    train_lm: Literal["frozen", "full", "lora"] = "frozen"
    train_vision: bool = False
    learning_rate: float = Field(gt=0)
    vision_learning_rate: float | None = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(16, ge=1, description="per device")
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float | None = 1.0
    optimizer: Literal["adamw", "adamw_8bit", "adafactor"] = Field(
        "adamw", description="adamw_8bit needs a CUDA GPU and bitsandbytes")
    sources: list[SourceConfig] | None = Field(None, min_length=1,
                                               description="this stage's data; default: data.sources")
    cached_features: bool = Field(True, description="use the on-disk vision feature cache when the vision tower is frozen")
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _trains_something(self) -> StageConfig:
        if not (self.train_projector or self.train_vision or self.train_lm != "frozen"):
            raise ValueError(f"stage {self.name!r} trains nothing")
        return self

    @property
    def uses_cache(self) -> bool:
        return self.cached_features and not self.train_vision

    @property
    def needs_images(self) -> bool:
        """With the LM frozen, only image rows reach a trainable weight: text-only rows give no gradient."""
        return self.train_lm == "frozen"


def default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="pretrain", train_projector=True, train_lm="frozen", learning_rate=1e-3, batch_size=32),
        StageConfig(name="finetune", train_projector=True, train_lm="full", learning_rate=2e-5, batch_size=16),
    ]


class HubConfig(Strict):
    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    private: bool = True
    token_env: str = "HF_TOKEN"


class EvalConfig(Strict):
    """Run synthgen's evaluator on the final model (when the evaluator is installed)."""

    tasks: list[str] = Field(default_factory=list, description="evaluator task names; empty: its defaults")
    limit: int | None = Field(None, ge=1, description="items per benchmark")
    options: dict[str, Any] = Field(default_factory=dict, description="passed on to the evaluator as is")


class TrainConfig(Strict):
    model: ModelConfig
    data: DataConfig
    stages: list[StageConfig] = Field(default_factory=default_stages, min_length=1)
    output_dir: str
    run_dir: str | None = Field(None, description="status.json, checkpoints, TensorBoard logs; default <output_dir>/run")
    feature_cache_dir: str | None = Field(None, description="default <output_dir>/feature_cache")
    feature_cache_dtype: Literal["float32", "float16"] = "float32"
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(500, ge=1)
    save_total_limit: int = Field(2, ge=1)
    resume: bool = True
    merge_lora: bool = Field(True, description="fold LoRA weights into the saved model so plain transformers loads it")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config (zero2/zero3 shipped in synthgen/trainer/configs)")
    report_to: list[Literal["tensorboard"]] = Field(default_factory=lambda: ["tensorboard"])
    push_to_hub: HubConfig | None = None
    eval: EvalConfig | None = None

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from synthgen.trainer.configs import path

        resolved = path(value)
        if not resolved.is_file():
            raise ValueError(f"DeepSpeed config {value!r} not found (use zero2, zero3 or a JSON file)")
        return str(resolved)

    @model_validator(mode="after")
    def _lora_zero3(self) -> TrainConfig:
        if self.deepspeed and self.merge_lora and any(s.train_lm == "lora" for s in self.stages):
            import json

            if json.loads(Path(self.deepspeed).read_text()).get("zero_optimization", {}).get("stage") == 3:
                raise ValueError("merging LoRA under ZeRO-3 is not supported: use zero2 or merge_lora: false")
        return self

    @model_validator(mode="after")
    def _every_stage_has_data(self) -> TrainConfig:
        if not self.data.sources:
            bare = [s.name for s in self.stages if not s.sources]
            if bare:
                raise ValueError(f"data.sources is empty and stages {bare} name no sources of their own")
        return self

    @model_validator(mode="after")
    def _towers_and_resolution(self) -> TrainConfig:
        mc = self.model
        if mc.image_grid_pinpoints and mc.image_aspect_ratio != "anyres":
            raise ValueError("model.image_grid_pinpoints needs model.image_aspect_ratio: anyres")
        return self

    def stage_sources(self, stage: StageConfig) -> list[SourceConfig]:
        return stage.sources or self.data.sources

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        return stages

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.output_dir) / "run"

    def resolved_cache_dir(self) -> Path:
        return Path(self.feature_cache_dir or Path(self.output_dir) / "feature_cache")


def read_config_file(path: Path) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".toml":
        return tomllib.loads(text)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`stages.0.learning_rate=1e-4` style overrides; values parse as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if key.startswith("stages.") and "stages" not in data:  # overriding the default stages
            data["stages"] = [s.model_dump(exclude_unset=True) for s in default_stages()]
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(path: Path, overrides: list[str] | None = None) -> TrainConfig:
    return TrainConfig.model_validate(apply_overrides(read_config_file(path), overrides or []))
