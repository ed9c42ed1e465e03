"""Training learns: a tiny random LLaVA, trained on generated shapes, names held-out colours."""

from __future__ import annotations

import io

import torch
import yaml
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from synthgen.trainer import smoke
from synthgen.trainer.cli import train_main

torch.set_num_threads(1)


def colour_accuracy(model_dir, n: int = 45) -> tuple[float, list[str]]:
    """Greedy answers to the training question on unseen images; right when they open with the colour."""
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + smoke.QUESTION}]}],
        add_generation_prompt=True)
    rows = smoke.shapes_rows(n, seed=12345)  # different seed: images never seen in training
    answers, right = [], 0
    for img, colour in zip(rows["image"], rows["colour"], strict=True):
        inputs = proc(images=Image.open(io.BytesIO(img["bytes"])), text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.append(answer)
        right += answer.startswith(colour)
    return right / n, answers


def test_tiny_llava_learns_colours_better_than_chance(tmp_path):
    smoke.save_vision(tmp_path / "v")
    smoke.save_lm(tmp_path / "lm", smoke.shapes_corpus())
    smoke.save_shapes_dataset(tmp_path / "ds", 300, seed=1)
    cfg = {"model": {"vision": str(tmp_path / "v"), "lm": str(tmp_path / "lm")},
           "data": {"sources": [{"path": str(tmp_path / "ds")}], "max_length": 64, "num_workers": 0},
           "stages": [{"name": "pretrain", "learning_rate": 3e-3, "max_steps": 100, "batch_size": 16},
                      {"name": "finetune", "train_lm": "full", "learning_rate": 1e-3, "max_steps": 150,
                       "batch_size": 16}],
           "output_dir": str(tmp_path / "out"), "precision": "fp32", "logging_steps": 50, "save_steps": 1000,
           "report_to": []}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    before, _ = colour_accuracy_untrained(tmp_path, cfg)
    assert train_main(tmp_path / "c.yaml", []) == 0
    acc, answers = colour_accuracy(tmp_path / "out")
    print(f"held-out colour accuracy: untrained {before:.2f}, trained {acc:.2f}")
    # chance is 1/3; 27 of 45 right has p < 1e-5 under guessing
    assert acc >= 0.6, (acc, answers[:10])
    assert acc > before + 0.25, (before, acc)


def colour_accuracy_untrained(tmp_path, cfg) -> tuple[float, list[str]]:
    from synthgen.trainer.assemble import assemble
    from synthgen.trainer.config import ModelConfig

    a = assemble(ModelConfig.model_validate(cfg["model"]))
    a.model.save_pretrained(tmp_path / "untrained")
    a.processor.save_pretrained(tmp_path / "untrained")
    return colour_accuracy(tmp_path / "untrained")
