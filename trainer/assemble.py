"""Build a LLaVA model from any ViT-style vision tower and any causal LM, on transformers' own classes.

The shell `LlavaForConditionalGeneration` is built on the meta device and the pretrained towers are
moved in as modules (no second copy of the weights); only the projector is freshly initialised.
The result is a plain transformers LLaVA: `save_pretrained` + `from_pretrained` round-trip.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector

from synthgen.trainer import remote_code, towers
from synthgen.trainer.chat_format import chat_template
from synthgen.trainer.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class Assembled:
    model: LlavaForConditionalGeneration | LlavaNextForConditionalGeneration
    processor: LlavaProcessor | LlavaNextProcessor

    @property
    def anyres(self) -> bool:
        return isinstance(self.model, LlavaNextForConditionalGeneration)

    @property
    def supports_feature_cache(self) -> bool:
        """Cached features are one (tokens, dim) array per image: not anyres, whose tile count varies."""
        return not self.anyres

    def image_tokens_for(self):
        """anyres: a function of an image reference giving its token count (else None: a fixed count)."""
        if not self.anyres:
            return None
        proc = self.processor
        crop = proc.image_processor.crop_size
        height, width = int(crop["height"]), int(crop["width"])
        drop = 1 if proc.vision_feature_select_strategy == "default" else 0

        def count(ref) -> int:
            w, h = ref.size()
            return proc._get_number_of_features(h, w, height, width) - drop

        return count

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def num_image_tokens(self) -> int:
        return int(self.model.config.image_seq_length)


def _vision_config(name: str, revision: str | None, trust: bool):
    cfg = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust)
    return getattr(cfg, "vision_config", None) or cfg  # CLIPConfig/SiglipConfig -> their vision half


def _image_size(vision_cfg, image_processor) -> tuple[int, int]:
    crop = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", True) else None
    crop = crop or getattr(image_processor, "size", None) or {}
    if isinstance(crop, dict) and "height" in crop:
        return int(crop["height"]), int(crop["width"])
    size = int(getattr(vision_cfg, "image_size", 224))
    return size, size


def _probe_tokens(tower, vision_cfg, image_processor, layer: int) -> tuple[int, int]:
    """(tokens the tower emits at `layer`, patch count): their difference is the CLS-like extras."""
    h, w = _image_size(vision_cfg, image_processor)
    param = next(tower.parameters())
    with torch.no_grad():
        out = tower(torch.zeros(1, 3, h, w, dtype=param.dtype, device=param.device), output_hidden_states=True,
                    return_dict=True)
    hidden = out.hidden_states[layer]
    if hidden.dim() != 3:
        raise ValueError(f"vision tower {type(tower).__name__} gives {hidden.dim()}-D hidden states; "
                         "LLaVA needs a ViT-style (batch, tokens, dim) encoder or a ConvNeXt")
    patch = int(vision_cfg.patch_size)
    return int(hidden.shape[1]), (h // patch) * (w // patch)


def _local_or_hub(name: str) -> str:
    """A name that looks like a path must exist: never send a mistyped path to the Hub as a repo id."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"model path {name} does not exist")
    return str(Path(name).expanduser()) if name.startswith("~") else name


def assemble(mc: ModelConfig, dtype: torch.dtype = torch.float32) -> Assembled:
    for name in (mc.init_from, mc.vision, mc.lm):
        if name:
            _local_or_hub(name)
    if mc.init_from:
        from synthgen.trainer.inference import load_model

        loaded = load_model(mc.init_from, dtype=dtype, attn_implementation=mc.attn_implementation,
                            trust_remote_code=mc.trust_remote_code)
        return Assembled(loaded.model, loaded.processor)
    assert mc.lm is not None
    trust = mc.trust_remote_code
    vision_cfg = _vision_config(mc.vision, mc.vision_revision, trust)
    if towers.is_conv_backbone(vision_cfg):
        tower, image_processor = _conv_tower(mc, vision_cfg, dtype)
        vision_cfg = tower.config
    else:
        if mc.image_size is not None:
            raise ValueError("model.image_size applies to ConvNeXt towers only: a ViT's position embeddings fix its "
                             "input size (use image_aspect_ratio: anyres for high resolution)")
        tower = AutoModel.from_pretrained(mc.vision, config=vision_cfg, revision=mc.vision_revision, dtype=dtype,
                                          trust_remote_code=trust, attn_implementation=mc.attn_implementation)
        image_processor = AutoImageProcessor.from_pretrained(mc.vision, revision=mc.vision_revision)
        if mc.image_aspect_ratio == "pad":
            image_processor = _padding_processor(image_processor, _image_size(vision_cfg, image_processor))
    if mc.conv_extra_stage and not isinstance(tower, towers.ConvTowerModel):
        raise ValueError("model.conv_extra_stage applies to ConvNeXt towers only")
    lm = AutoModelForCausalLM.from_pretrained(mc.lm, revision=mc.lm_revision, dtype=dtype, trust_remote_code=trust,
                                              attn_implementation=mc.attn_implementation)
    tok = AutoTokenizer.from_pretrained(mc.lm, revision=mc.lm_revision, trust_remote_code=trust)
    if trust:
        remote_code.register_lm(lm)  # LLaVA builds its LM through AutoModel: it must know this one

    if mc.image_token not in tok.get_vocab():
        tok.add_tokens([AddedToken(mc.image_token, special=True, normalized=False)], special_tokens=True)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<pad>"})
    image_id = tok.convert_tokens_to_ids(mc.image_token)

    layer = mc.vision_feature_layer
    if layer is None:
        layer = -1 if isinstance(tower, towers.ConvTowerModel) else -2
    n_tokens, n_patches = _probe_tokens(tower, vision_cfg, image_processor, layer)
    extra = n_tokens - n_patches
    strategy = mc.vision_feature_select_strategy
    if strategy == "auto":
        if extra not in (0, 1):
            raise ValueError(f"vision tower emits {n_tokens} tokens for {n_patches} patches; set "
                             "model.vision_feature_select_strategy explicitly")
        strategy = "default" if extra == 1 else "full"
    image_seq = n_tokens - (1 if strategy == "default" else 0)

    anyres = mc.image_aspect_ratio == "anyres"
    if anyres and isinstance(tower, towers.ConvTowerModel):
        raise ValueError("anyres tiling is for ViT towers; ConvNeXt towers take the high resolution directly "
                         "(model.image_size)")
    common = dict(vision_config=vision_cfg, text_config=lm.config, image_token_index=image_id,
                  image_seq_length=image_seq, projector_hidden_act=mc.projector_act,
                  vision_feature_layer=layer, vision_feature_select_strategy=strategy,
                  tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)))
    if anyres:
        h, w = _image_size(vision_cfg, image_processor)
        pinpoints = mc.image_grid_pinpoints or [[h, w], [h, 2 * w], [2 * h, w], [2 * h, 2 * w], [h, 3 * w], [3 * h, w]]
        cfg = LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        image_processor = _tiling_processor(image_processor, (h, w), pinpoints)
        with torch.device("meta"):
            model = LlavaNextForConditionalGeneration(cfg)
        projector = LlavaNextMultiModalProjector(cfg).to(dtype)
        hidden = lm.config.hidden_size
        model.model.image_newline = torch.nn.Parameter(torch.randn(hidden, dtype=dtype) / hidden ** 0.5)
    else:
        cfg = LlavaConfig(**common)
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(cfg)
        projector = LlavaMultiModalProjector(cfg).to(dtype)
    model.model.vision_tower = tower
    model.model.language_model = getattr(lm, lm.base_model_prefix)
    model.lm_head = lm.get_output_embeddings()
    model.model.multi_modal_projector = projector
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameters left unset after assembly: {left[:5]}")
    if len(tok) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=True)
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id

    template = chat_template(mc.image_token, mc.system_prompt)
    tok.chat_template = template
    proc_cls = LlavaNextProcessor if anyres else LlavaProcessor
    processor = proc_cls(image_processor=image_processor, tokenizer=tok, patch_size=int(vision_cfg.patch_size),
                         vision_feature_select_strategy=strategy, chat_template=template,
                         image_token=mc.image_token, num_additional_image_tokens=extra)
    log.info("assembled LLaVA: vision %s (%d image tokens, strategy %s), lm %s, vocab %d", mc.vision, image_seq,
             strategy, mc.lm, len(tok))
    return Assembled(model, processor)


def _processor_basics(ip) -> dict:
    return {k: getattr(ip, k) for k in ("image_mean", "image_std", "resample", "do_rescale", "rescale_factor",
                                        "do_normalize", "do_convert_rgb") if getattr(ip, k, None) is not None}


def _padding_processor(ip, size: tuple[int, int]) -> LlavaImageProcessor:
    """LLaVA-1.5's `image_aspect_ratio: pad`: pad to a square in the mean colour, then resize (no crop).

    transformers' LlavaImageProcessor does exactly this with do_pad, and it is saved with the model,
    so inference pads the same way.
    """
    return LlavaImageProcessor(do_pad=True, do_resize=True, size={"height": size[0], "width": size[1]},
                               do_center_crop=False, **_processor_basics(ip))


def _tiling_processor(ip, size: tuple[int, int], pinpoints: list[list[int]]) -> LlavaNextImageProcessor:
    """LLaVA-NeXT anyres: the image resized onto the best grid of pinpoints, cut into tower-sized tiles,
    plus the whole image at the tower's size."""
    return LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, size={"shortest_edge": min(size)},
                                   crop_size={"height": size[0], "width": size[1]}, do_center_crop=True,
                                   do_pad=True, **_processor_basics(ip))


def _conv_tower(mc: ModelConfig, backbone_cfg, dtype: torch.dtype):
    """ConvNeXt at mc.image_size (default: the checkpoint's), resized to a square or padded first."""
    size = mc.image_size or int(getattr(backbone_cfg, "image_size", 224))
    if mc.image_aspect_ratio == "anyres":
        raise ValueError("anyres tiling is for ViT towers; ConvNeXt towers take the high resolution directly "
                         "(model.image_size)")
    tower = towers.conv_tower(mc.vision, backbone_cfg, mc.conv_extra_stage, mc.conv_extra_stage_depth, size,
                              revision=mc.vision_revision, dtype=dtype)
    if size % tower.config.patch_size:
        raise ValueError(f"model.image_size {size} must be a multiple of the tower's stride {tower.config.patch_size}")
    base = AutoImageProcessor.from_pretrained(mc.vision, revision=mc.vision_revision)
    ip = LlavaImageProcessor(do_pad=mc.image_aspect_ratio == "pad", do_resize=True,
                             size={"height": size, "width": size}, do_center_crop=False, **_processor_basics(base))
    return tower, ip


@torch.no_grad()
def vision_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower's selected hidden states, before the projector: what the feature cache stores."""
    cfg = model.config
    tower = model.model.vision_tower
    param = next(tower.parameters())
    out = tower(pixel_values.to(param.device, param.dtype), output_hidden_states=True, return_dict=True)
    feats = out.hidden_states[cfg.vision_feature_layer]
    if cfg.vision_feature_select_strategy == "default":
        feats = feats[:, 1:]
    return feats


def vision_fingerprint(model: LlavaForConditionalGeneration, image_processor, revision: str | None = None) -> str:
    """Key for cached features: tower weights, config, layer/selection and preprocessing all count."""
    h = hashlib.sha256()
    cfg = model.config
    h.update(repr((cfg.vision_config.to_json_string(use_diff=False), cfg.vision_feature_layer,
                   cfg.vision_feature_select_strategy, revision,
                   image_processor.to_json_string() if image_processor is not None else None)).encode())
    for name, tensor in sorted(model.model.vision_tower.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]
