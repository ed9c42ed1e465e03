"""Tiny random LLaVA parts saved like Hub checkpoints: for smoke runs, CI and the benchmark.

Weights are random (nothing is downloaded); the tokenizer is a small BPE trained on the given
text, so Japanese prompts tokenize into real pieces rather than <unk>.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    ConvNextConfig,
    ConvNextImageProcessor,
    ConvNextModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from synthgen.trainer.chat_format import ASSISTANT, END, USER

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_tokenizer(corpus: Iterable[str], out: Path, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    texts = [*corpus, USER, ASSISTANT, END]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.decoder = decoders.BPEDecoder()
    alphabet = sorted({ch for t in texts for ch in t})
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                        initial_alphabet=alphabet, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def save_vision(out: Path, kind: str = "clip", image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                layers: int = 2, heads: int = 2, intermediate: int | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    common = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden)
    crop = {"height": image_size, "width": image_size}
    if kind == "clip":
        CLIPVisionModel(CLIPVisionConfig(**common)).save_pretrained(out)
        CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(out)
    elif kind == "siglip":
        SiglipVisionModel(SiglipVisionConfig(**common)).save_pretrained(out)
        SiglipImageProcessor(size=crop).save_pretrained(out)
    elif kind == "convnext":  # ConvNeXt family (ConvLLaVA): stride 4 stem, then x2 per stage
        ConvNextModel(ConvNextConfig(num_channels=3, num_stages=layers, hidden_sizes=[hidden * 2 ** i for i in range(layers)],
                                     depths=[1] * layers, image_size=image_size)).save_pretrained(out)
        ConvNextImageProcessor(size={"shortest_edge": image_size}).save_pretrained(out)
    else:
        raise ValueError(f"unknown vision kind {kind!r}")
    return Path(out)


LM_FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "mixtral": (MixtralConfig, MixtralForCausalLM),
               "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM), "gpt2": (GPT2Config, GPT2LMHeadModel)}


def save_lm(out: Path, corpus: Iterable[str], hidden: int = 64, layers: int = 2, heads: int = 4,
            kv_heads: int | None = None, intermediate: int | None = None, vocab_size: int = 400,
            max_positions: int = 512, seed: int = 0, family: str = "llama", experts: int = 4) -> Path:
    """A random causal LM of a family: llama (TinyLlama, Llama-3, llm-jp), or the MoE stand-ins for
    Tanuki-8x8B: mixtral (top-2 of `experts`) and qwen2_moe (plus a shared expert); gpt2 (llm-jp-1.3b-v1.0)."""
    tok = train_tokenizer(corpus, out, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config_cls, model_cls = LM_FAMILIES[family]
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
        model_cls(cfg).save_pretrained(out)
        return Path(out)
    kw = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
              max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    if family == "mixtral":
        kw.update(num_local_experts=experts, num_experts_per_tok=2)
    elif family == "qwen2_moe":
        kw.update(num_experts=experts, num_experts_per_tok=2, moe_intermediate_size=hidden,
                  shared_expert_intermediate_size=hidden, decoder_sparse_step=1)
    model_cls(config_cls(**kw)).save_pretrained(out)
    return Path(out)


REMOTE_CONFIG = '''"""A Mixtral-shaped MoE config under its own model type, the way Tanuki-8x8B ships its code."""
from transformers import MixtralConfig


class {cls}Config(MixtralConfig):
    model_type = "{name}"
'''
REMOTE_MODELING = '''"""Model classes for the {name} stand-in; the relative import is the one Tanuki's own code uses."""
from transformers import MixtralForCausalLM, MixtralModel

from .configuration_{name} import {cls}Config


class {cls}Model(MixtralModel):
    config_class = {cls}Config


class {cls}ForCausalLM(MixtralForCausalLM):
    config_class = {cls}Config

    def __init__(self, config):
        super().__init__(config)
        self.model = {cls}Model(config)
        self.post_init()
'''


def save_remote_code_lm(out: Path, corpus: Iterable[str], name: str = "tanuki", **kw) -> Path:
    """A tiny MoE LM that only loads with trust_remote_code: its config.json names a model type transformers
    does not know and maps the Auto classes to configuration_/modeling_ files beside the weights."""
    import json

    from safetensors.torch import save_file

    save_lm(out, corpus, family="mixtral", **kw)
    # the weights as the classes hold them: transformers converts Mixtral's on-disk expert layout by
    # model type, which a remote-code type does not get
    model = MixtralForCausalLM.from_pretrained(out)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out) / "model.safetensors"),
              metadata={"format": "pt"})
    cls = name.capitalize()
    (Path(out) / f"configuration_{name}.py").write_text(REMOTE_CONFIG.format(cls=cls, name=name))
    (Path(out) / f"modeling_{name}.py").write_text(REMOTE_MODELING.format(cls=cls, name=name))
    path = Path(out) / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(model_type=name, architectures=[f"{cls}ForCausalLM"],
               auto_map={"AutoConfig": f"configuration_{name}.{cls}Config", "AutoModel": f"modeling_{name}.{cls}Model",
                         "AutoModelForCausalLM": f"modeling_{name}.{cls}ForCausalLM"})
    path.write_text(json.dumps(cfg, indent=1))
    return Path(out)


COLOURS = {"赤": (220, 30, 30), "青": (30, 60, 220), "緑": (30, 170, 60)}
SHAPES = ("丸", "四角", "三角")
QUESTION = "この図形は何色ですか？"


def shape_image(colour: str, shape: str, rng, size: int = 32):
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    fill = tuple(int(max(0, min(255, c + rng.integers(-25, 26)))) for c in COLOURS[colour])
    if shape == "丸":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "四角":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def shapes_rows(n: int, seed: int = 0, size: int = 32) -> dict[str, list]:
    """Rows in synthgen's dataset layout: an `image` and OpenAI-style `messages` naming the colour."""
    import io

    import numpy as np

    rng = np.random.default_rng(seed)
    images, messages, colours = [], [], []
    names = list(COLOURS)
    for _ in range(n):
        colour = names[int(rng.integers(len(names)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        buf = io.BytesIO()
        shape_image(colour, shape, rng, size).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
        messages.append([{"role": "user", "content": "<image>\n" + QUESTION},
                         {"role": "assistant", "content": f"{colour}です。{colour}い{shape}が描かれています。"
                          if colour != "緑" else f"{colour}です。{colour}の{shape}が描かれています。"}])
        colours.append(colour)
    return {"image": images, "messages": messages, "colour": colours}


TEXT_QA = [("三足す四は？", "七です。"), ("赤と青を混ぜると？", "紫です。"), ("丸の反対は？", "四角です。"),
           ("一週間は何日？", "七日です。")]


def save_shapes_dataset(out: Path, n: int, seed: int = 0, size: int = 32, text_only: int = 0,
                        width: int | None = None) -> Path:
    """`datasets.load_from_disk`-able folder with the schema synthgen's engine writes.

    `text_only` rows (no image, a short Japanese Q&A) are interleaved with the image rows, as a
    persona-qa run mixed into an image run gives; `width` makes images wider than tall (anyres).
    """
    import io

    import datasets
    from PIL import Image

    rows = shapes_rows(n, seed, size)
    if width:
        for img in rows["image"]:
            with Image.open(io.BytesIO(img["bytes"])) as im:
                buf = io.BytesIO()
                im.resize((width, size)).save(buf, format="PNG")
            img["bytes"] = buf.getvalue()
    for k in range(text_only):
        q, a = TEXT_QA[k % len(TEXT_QA)]
        at = min(len(rows["image"]), (k + 1) * max(1, n // max(1, text_only)))
        rows["image"].insert(at, None)
        rows["messages"].insert(at, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        rows["colour"].insert(at, "")
    features = datasets.Features({
        "image": datasets.Image(),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "colour": datasets.Value("string"),
    })
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(out))
    return Path(out)


def save_llava_json(out: Path, n: int, seed: int = 0, size: int = 32, answer: str = "詳しく") -> Path:
    """LLaVA conversation JSON (images as files beside it): the format LLaVA / LLaVA-JP data ships in."""
    import json

    import numpy as np

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
        shape_image(colour, shape, rng, size).save(out / "images" / f"{i}.png")
        rows.append({"id": str(i), "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTION},
            {"from": "gpt", "value": f"{colour}です。{answer}は{shape}です。"}]})
    (out / "data.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return out / "data.json"


def shapes_corpus() -> list[str]:
    """Text to train the smoke tokenizer on: every phrase the shapes data and chat format use."""
    out = [QUESTION, *(q + a for q, a in TEXT_QA)]
    for c in COLOURS:
        for s in SHAPES:
            out.append(f"{c}です。{c}い{s}が描かれています。")
            out.append(f"{c}です。{c}の{s}が描かれています。")
    return out * 3
