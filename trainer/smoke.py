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
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
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
    else:
        raise ValueError(f"unknown vision kind {kind!r}")
    return Path(out)


def save_lm(out: Path, corpus: Iterable[str], hidden: int = 64, layers: int = 2, heads: int = 4,
            kv_heads: int | None = None, intermediate: int | None = None, vocab_size: int = 400,
            max_positions: int = 512, seed: int = 0) -> Path:
    tok = train_tokenizer(corpus, out, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
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


def save_shapes_dataset(out: Path, n: int, seed: int = 0, size: int = 32) -> Path:
    """`datasets.load_from_disk`-able folder with the schema synthgen's engine writes."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "colour": datasets.Value("string"),
    })
    datasets.Dataset.from_dict(shapes_rows(n, seed, size), features=features).save_to_disk(str(out))
    return Path(out)


def shapes_corpus() -> list[str]:
    """Text to train the smoke tokenizer on: every phrase the shapes data and chat format use."""
    out = [QUESTION]
    for c in COLOURS:
        for s in SHAPES:
            out.append(f"{c}です。{c}い{s}が描かれています。")
            out.append(f"{c}です。{c}の{s}が描かれています。")
    return out * 3
