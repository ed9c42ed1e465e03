"""ConvNeXt vision towers (ConvLLaVA) as a transformers model that LLaVA's classes can hold.

transformers' LLaVA takes `hidden_states[vision_feature_layer]` from its tower as (batch, tokens,
dim); ConvNeXt gives (batch, channels, h, w) feature maps. `ConvTowerModel` wraps transformers'
own ConvNextModel / ConvNextV2Model (pretrained weights load unchanged) and returns each stage's
map flattened to tokens, optionally after a fifth stage as ConvLLaVA adds (stride 2 again: at
768 px the 24x24 map of stage 4 becomes 12x12 = 144 tokens). Its config and model are registered
with AutoConfig/AutoModel under `synthgen_conv_tower`, so a saved LLaVA with this tower is a plain
`LlavaForConditionalGeneration` folder: `synthgen.trainer.inference.load_model(path)` (or importing
this module, then `from_pretrained`) loads it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    ConvNextConfig,
    ConvNextModel,
    ConvNextV2Config,
    ConvNextV2Model,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODEL_TYPE = "synthgen_conv_tower"
BACKBONES = {"convnext": (ConvNextConfig, ConvNextModel), "convnextv2": (ConvNextV2Config, ConvNextV2Model)}


class ConvTowerConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, backbone: dict | None = None, extra_stage: bool = False, extra_stage_depth: int = 3,
                 image_size: int = 768, **kwargs):
        super().__init__(**kwargs)
        self.backbone = dict(backbone or {"model_type": "convnext"})
        self.extra_stage = extra_stage
        self.extra_stage_depth = extra_stage_depth
        self.image_size = image_size
        bcfg = self.backbone_config()
        self.hidden_size = bcfg.hidden_sizes[-1] * (2 if extra_stage else 1)
        # tokens per side = image_size / patch_size, as LLaVA's processor counts them
        self.patch_size = 4 * 2 ** (bcfg.num_stages - 1 + int(extra_stage))

    def backbone_config(self):
        data = dict(self.backbone)
        kind = data.pop("model_type", "convnext")
        if kind not in BACKBONES:
            raise ValueError(f"unsupported conv backbone {kind!r} (convnext or convnextv2)")
        return BACKBONES[kind][0](**data)


class ConvTowerModel(PreTrainedModel):
    config_class = ConvTowerConfig
    base_model_prefix = "tower"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False

    def __init__(self, config: ConvTowerConfig):
        super().__init__(config)
        bcfg = config.backbone_config()
        self.backbone = BACKBONES[bcfg.model_type][1](bcfg)
        self.extra = None
        if config.extra_stage:
            stage_cls = type(self.backbone.encoder.stages[-1])
            width = bcfg.hidden_sizes[-1]
            self.extra = stage_cls(bcfg, in_channels=width, out_channels=2 * width, depth=config.extra_stage_depth)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "layer_scale_parameter") and module.layer_scale_parameter is not None:
            nn.init.constant_(module.layer_scale_parameter, self.config.backbone_config().layer_scale_init_value)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling:
        x = self.backbone.embeddings(pixel_values)
        maps = [x]
        for stage in self.backbone.encoder.stages:
            x = stage(x)
            maps.append(x)
        if self.extra is not None:
            x = self.extra(x)
            maps.append(x)
        tokens = tuple(m.flatten(2).transpose(1, 2) for m in maps)  # (b, c, h, w) -> (b, h*w, c)
        return BaseModelOutputWithPooling(last_hidden_state=tokens[-1], pooler_output=tokens[-1].mean(1),
                                          hidden_states=tokens)


def is_conv_backbone(config) -> bool:
    return getattr(config, "model_type", None) in BACKBONES


def conv_tower(name: str, backbone_config, extra_stage: bool, extra_depth: int, image_size: int,
               revision: str | None = None, dtype: torch.dtype = torch.float32) -> ConvTowerModel:
    """A tower around a pretrained ConvNeXt checkpoint (its classifier head, if any, is dropped)."""
    cfg = ConvTowerConfig(backbone=backbone_config.to_dict(), extra_stage=extra_stage, extra_stage_depth=extra_depth,
                          image_size=image_size)
    tower = ConvTowerModel(cfg).to(dtype)
    tower.backbone = AutoModel.from_pretrained(name, config=backbone_config, revision=revision, dtype=dtype)
    return tower


def register() -> None:
    """Make `synthgen_conv_tower` known to transformers' Auto classes (idempotent)."""
    with contextlib.suppress(ValueError):  # already registered
        AutoConfig.register(MODEL_TYPE, ConvTowerConfig)
    with contextlib.suppress(ValueError):
        AutoModel.register(ConvTowerConfig, ConvTowerModel)


register()
