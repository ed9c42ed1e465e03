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
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from synthgen.trainer.chat_format import chat_template
from synthgen.trainer.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class Assembled:
    model: LlavaForConditionalGeneration
    processor: LlavaProcessor

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
    crop = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
    if isinstance(crop, dict) and "height" in crop:
        return int(crop["height"]), int(crop["width"])
    size = int(getattr(vision_cfg, "image_size", 224))
    return size, size


def _probe_tokens(tower, vision_cfg, image_processor, layer: int) -> tuple[int, int]:
    """(tokens the tower emits at `layer`, patch count): their difference is the CLS-like extras."""
    h, w = _image_size(vision_cfg, image_processor)
    patch = int(vision_cfg.patch_size)
    param = next(tower.parameters())
    with torch.no_grad():
        out = tower(torch.zeros(1, 3, h, w, dtype=param.dtype, device=param.device), output_hidden_states=True,
                    return_dict=True)
    hidden = out.hidden_states[layer]
    if hidden.dim() != 3:
        raise ValueError(f"vision tower {type(tower).__name__} gives {hidden.dim()}-D hidden states; "
                         "LLaVA needs a ViT-style (batch, tokens, dim) encoder")
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
        model = LlavaForConditionalGeneration.from_pretrained(mc.init_from, dtype=dtype,
                                                              attn_implementation=mc.attn_implementation)
        processor = AutoProcessor.from_pretrained(mc.init_from)
        return Assembled(model, processor)
    assert mc.lm is not None
    trust = mc.trust_remote_code
    vision_cfg = _vision_config(mc.vision, mc.vision_revision, trust)
    tower = AutoModel.from_pretrained(mc.vision, config=vision_cfg, revision=mc.vision_revision, dtype=dtype,
                                      trust_remote_code=trust, attn_implementation=mc.attn_implementation)
    image_processor = AutoImageProcessor.from_pretrained(mc.vision, revision=mc.vision_revision)
    lm = AutoModelForCausalLM.from_pretrained(mc.lm, revision=mc.lm_revision, dtype=dtype, trust_remote_code=trust,
                                              attn_implementation=mc.attn_implementation)
    tok = AutoTokenizer.from_pretrained(mc.lm, revision=mc.lm_revision, trust_remote_code=trust)

    if mc.image_token not in tok.get_vocab():
        tok.add_tokens([AddedToken(mc.image_token, special=True, normalized=False)], special_tokens=True)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<pad>"})
    image_id = tok.convert_tokens_to_ids(mc.image_token)

    n_tokens, n_patches = _probe_tokens(tower, vision_cfg, image_processor, mc.vision_feature_layer)
    extra = n_tokens - n_patches
    strategy = mc.vision_feature_select_strategy
    if strategy == "auto":
        if extra not in (0, 1):
            raise ValueError(f"vision tower emits {n_tokens} tokens for {n_patches} patches; set "
                             "model.vision_feature_select_strategy explicitly")
        strategy = "default" if extra == 1 else "full"
    image_seq = n_tokens - (1 if strategy == "default" else 0)

    cfg = LlavaConfig(vision_config=vision_cfg, text_config=lm.config, image_token_index=image_id,
                      image_seq_length=image_seq, projector_hidden_act=mc.projector_act,
                      vision_feature_layer=mc.vision_feature_layer, vision_feature_select_strategy=strategy,
                      tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(cfg)
    model.model.vision_tower = tower
    model.model.language_model = getattr(lm, lm.base_model_prefix)
    model.lm_head = lm.get_output_embeddings()
    projector = LlavaMultiModalProjector(cfg).to(dtype)
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
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=int(vision_cfg.patch_size),
                               vision_feature_select_strategy=strategy, chat_template=template,
                               image_token=mc.image_token, num_additional_image_tokens=extra)
    log.info("assembled LLaVA: vision %s (%d image tokens, strategy %s), lm %s, vocab %d", mc.vision, image_seq,
             strategy, mc.lm, len(tok))
    return Assembled(model, processor)


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
