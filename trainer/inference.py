"""Load a model the trainer saved and generate with it: the one documented call, whatever the tower.

    from synthgen.trainer.inference import load_model, generate
    loaded = load_model("outputs/llava-ja")            # LLaVA, LLaVA-NeXT (anyres) or ConvNeXt-tower LLaVA
    print(generate(loaded, [image], ["この画像を説明してください。"], max_new_tokens=64)[0])

Saved folders are plain transformers checkpoints (`LlavaForConditionalGeneration` or
`LlavaNextForConditionalGeneration` + processor); a ConvNeXt tower needs synthgen's tower class
registered with transformers first, which importing this module does; an LM with its own code
(Tanuki) needs `trust_remote_code=True`, and its code files are in the folder. The evaluator calls these
functions for in-process models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from synthgen.trainer import remote_code, towers  # noqa: F401  (towers registers synthgen_conv_tower)

CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}


@dataclass
class Loaded:
    model: LlavaForConditionalGeneration | LlavaNextForConditionalGeneration
    processor: Any

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def load_model(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               attn_implementation: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """The model and processor of a trainer output folder (or a stage folder), in eval mode."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    cls = CLASSES.get(config.get("model_type"))
    if cls is None:
        raise ValueError(f"{path}: model_type {config.get('model_type')!r} is not a LLaVA the trainer writes "
                         f"({', '.join(CLASSES)})")
    remote_code.register_saved(path, config, trust_remote_code)
    model = cls.from_pretrained(str(path), dtype=dtype or torch.float32, attn_implementation=attn_implementation,
                                trust_remote_code=trust_remote_code)
    if device is not None:
        model.to(device)
    processor = AutoProcessor.from_pretrained(str(path))
    return Loaded(model.eval(), processor)


def prompt_for(loaded: Loaded, question: str, with_image: bool = True, system: str | None = None) -> str:
    content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": ("\n" if with_image else "") + question})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return loaded.processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.no_grad()
def generate(loaded: Loaded, images: list[Any] | None, questions: list[str], max_new_tokens: int = 256,
             do_sample: bool = False, **gen_kwargs) -> list[str]:
    """Answers to a batch of questions (one image each, or None for text-only), left-padded, greedy by default."""
    if images is not None and len(images) != len(questions):
        raise ValueError("one image per question (or images=None)")
    proc, model = loaded.processor, loaded.model
    tok = proc.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        has = images is not None and all(im is not None for im in images)
        prompts = [prompt_for(loaded, q, with_image=has) for q in questions]
        if has:
            inputs = proc(images=list(images), text=prompts, return_tensors="pt", padding=True)
        else:
            inputs = tok(prompts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                         pad_token_id=tok.pad_token_id, **gen_kwargs)
    return proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
