"""Towers and resolution (ConvNeXt + 5th stage, anyres tiling, pad-to-square), optimizers by name, eval hook."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synthgen.trainer import smoke
from synthgen.trainer import train as train_mod
from synthgen.trainer.assemble import assemble
from synthgen.trainer.cli import train_main
from synthgen.trainer.config import ModelConfig, StageConfig, TrainConfig
from synthgen.trainer.inference import generate, load_model
from synthgen.trainer.progress import read_status
from synthgen.trainer.train import Run, read_seen, run_stage

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tower-parts")
    smoke.save_vision(d / "clip", "clip")
    smoke.save_vision(d / "convnext", "convnext", image_size=64, hidden=8, layers=2)
    smoke.save_lm(d / "lm", smoke.shapes_corpus())
    smoke.save_shapes_dataset(d / "square64", 6, seed=1, size=64)
    smoke.save_shapes_dataset(d / "wide", 6, seed=2, width=64, text_only=2)  # 64x32 images and text rows
    return d


def config(parts, out, model: dict, source: str, stages: list[dict]) -> dict:
    return {"model": {"lm": str(parts / "lm"), **model},
            "data": {"sources": [{"path": str(parts / source)}], "max_length": 200, "num_workers": 0},
            "stages": stages, "output_dir": str(out / "model"), "run_dir": str(out / "run"), "precision": "fp32",
            "logging_steps": 1, "save_steps": 100, "report_to": [], "feature_cache_dir": str(out / "cache")}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_convnext_tower_with_fifth_stage_trains_unfrozen_and_reloads(parts, tmp_path):
    """ConvLLaVA: 64 px through 2 ConvNeXt stages + the added one = stride 16, 4x4 = 16 tokens; a stage
    with train_vision updates the backbone and stage 5; the saved folder reloads with load_model."""
    plain = assemble(ModelConfig(vision=str(parts / "convnext"), lm=str(parts / "lm")))
    assert plain.num_image_tokens == 64 and plain.model.config.vision_feature_layer == -1  # stride 8: 8x8
    cfg = config(parts, tmp_path, {"vision": str(parts / "convnext"), "conv_extra_stage": True, "image_size": 64},
                 "square64", [{"name": "projector", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 2},
                              {"name": "vision", "train_vision": True, "learning_rate": 1e-3, "max_steps": 2,
                               "batch_size": 2, "optimizer": "adafactor"}])
    run = Run(TrainConfig.model_validate(cfg))
    a = run.ensure_model(None)
    assert a.num_image_tokens == 16 and a.model.config.vision_config.patch_size == 16
    before = snapshot(a.model)
    run_stage(run, 0, run.cfg.stages[0])
    after1 = snapshot(run.assembled.model)
    assert not [k for k in before if "vision_tower" in k and not torch.equal(before[k], after1[k])]
    run_stage(run, 1, run.cfg.stages[1])
    after2 = snapshot(run.assembled.model)
    moved = [k for k in after1 if "vision_tower" in k and not torch.equal(after1[k], after2[k])]
    assert any(".backbone." in k for k in moved) and any(".extra." in k for k in moved)

    loaded = load_model(tmp_path / "model")
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"
    assert all(torch.equal(v, after2[k]) for k, v in loaded.model.state_dict().items())
    img = smoke.shape_image("赤", "丸", np.random.default_rng(0), 64)
    inputs = loaded.processor(images=img, text="<image>\n色は？", return_tensors="pt")
    assert int((inputs["input_ids"] == loaded.model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        assert torch.equal(run.assembled.model(**inputs).logits, loaded.model(**inputs).logits)
    answers = generate(loaded, [img], ["色は？"], max_new_tokens=2)
    assert len(answers) == 1 and isinstance(answers[0], str)

    # `synthgen eval --model` in a fresh process (no trainer module imported yet) scores it too.
    import os
    import subprocess
    import sys

    import eval_data

    task = eval_data.vg_vqa(tmp_path / "vqa", images=1, per_image=2)
    proc = subprocess.run([sys.executable, "-m", "synthgen.service.cli", "eval", "--model", str(tmp_path / "model"),
                           "--tasks", "ja-vg-vqa-500", "--source", f"ja-vg-vqa-500={task}", "--max-tokens", "2",
                           "--device", "cpu", "--out", str(tmp_path / "eval")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    samples = report["tasks"]["ja-vg-vqa-500"]["samples"]
    assert len(samples) == 2 and not any(s.get("error") for s in samples)


def test_anyres_tiles_wide_images_trains_mixed_batches_and_reloads_as_llava_next(parts, tmp_path):
    """LLaVA-NeXT anyres on CLIP: a 64x32 image is tiled on the 1x2 grid; training counts its tokens as
    transformers' processor does; mixed image/text batches of 3; saved as LlavaNextForConditionalGeneration."""
    cfg = config(parts, tmp_path, {"vision": str(parts / "clip"), "image_aspect_ratio": "anyres"}, "wide",
                 [{"name": "pretrain", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 3},
                  {"name": "finetune", "train_lm": "full", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 3}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert train_main(tmp_path / "c.yaml", []) == 0
    assert not (tmp_path / "cache").exists()  # anyres runs the tower live (tile counts vary per image)
    assert len(read_seen(tmp_path / "run", "finetune")) == 6
    from safetensors.torch import load_file

    assert "image_newline" in load_file(str(tmp_path / "model" / "mm_projector.safetensors"))  # LLaVA-NeXT's part

    from transformers import LlavaNextForConditionalGeneration

    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded.model, LlavaNextForConditionalGeneration)
    assert loaded.model.config.image_grid_pinpoints[:3] == [[32, 32], [32, 64], [64, 32]]
    wide = smoke.shape_image("緑", "三角", np.random.default_rng(3), 32).resize((64, 32))
    prompt = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n色は？"}]}], add_generation_prompt=True)
    inputs = loaded.processor(images=wide, text=prompt, return_tensors="pt")
    n_tokens = int((inputs["input_ids"] == loaded.model.config.image_token_id).sum())
    assert n_tokens > 16  # base image + two tiles (minus padding rows) + newlines
    run = Run(TrainConfig.model_validate(cfg))
    run.ensure_model(None)
    buf = io.BytesIO()
    wide.save(buf, format="PNG")
    from synthgen.trainer.sources import ImageRef

    assert run.encoder.image_tokens_for(ImageRef(data=buf.getvalue())) == n_tokens  # training == inference
    assert LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "model")  # plain transformers too
    answers = generate(loaded, [wide, wide.resize((32, 64))], ["色は？", "形は？"], max_new_tokens=2)
    assert len(answers) == 2


def test_pad_to_square_is_llavas_and_saved_with_the_model(parts, tmp_path):
    a = assemble(ModelConfig(vision=str(parts / "clip"), lm=str(parts / "lm"), image_aspect_ratio="pad"))
    a.processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    ip = AutoProcessor.from_pretrained(tmp_path).image_processor
    assert ip.do_pad and not ip.do_center_crop
    img = Image.new("RGB", (64, 16), (255, 0, 0))  # wide and red: padded above and below in the mean colour
    px = ip(img, return_tensors="pt")["pixel_values"][0]
    assert px.shape[-2:] == (32, 32)
    mean = torch.tensor([int(x * 255) / 255 for x in ip.image_mean])
    pad = (mean - torch.tensor(ip.image_mean)) / torch.tensor(ip.image_std)
    assert torch.allclose(px[:, 0, 16], pad, atol=0.02)  # top row: background colour
    assert px[0, 16, 16] > 1.0  # middle: red
    with pytest.raises(ValueError, match="ConvNeXt towers only"):
        assemble(ModelConfig(vision=str(parts / "clip"), lm=str(parts / "lm"), image_size=64))


def test_optimizers_by_name_and_gpu_options_fail_clearly(parts, tmp_path):
    params = [{"params": [torch.nn.Parameter(torch.ones(2, 2))], "lr": 1e-3, "weight_decay": 0.0}]
    stage = StageConfig(name="s", learning_rate=1e-3, optimizer="adafactor")
    assert type(train_mod.make_optimizer(stage, params)).__name__ == "Adafactor"
    assert isinstance(train_mod.make_optimizer(stage.model_copy(update={"optimizer": "adamw"}), params),
                      torch.optim.AdamW)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"adamw_8bit .* needs a CUDA GPU"):
            train_mod.make_optimizer(stage.model_copy(update={"optimizer": "adamw_8bit"}), params)
        cfg = config(parts, tmp_path, {"vision": str(parts / "clip")}, "wide",
                     [{"name": "s", "learning_rate": 1e-3, "optimizer": "adamw_8bit"}])
        cfg.update(precision="fp16", deepspeed="zero2")
        with pytest.raises(RuntimeError) as err:
            train_mod.preflight(TrainConfig.model_validate(cfg))
        assert str(err.value) == ("no CUDA GPU is present, and these options need one: stages.0.optimizer=adamw_8bit; "
                                  "deepspeed=deepspeed_zero2.json (DeepSpeed ZeRO runs on CUDA GPUs); "
                                  "precision=fp16 (use bf16 or fp32 on a CPU)")
    with pytest.raises(ValueError, match="optimizer"):
        StageConfig(name="s", learning_rate=1e-3, optimizer="sgd")


def test_eval_section_calls_the_evaluator_or_says_it_is_not_available(parts, tmp_path, monkeypatch):
    import synthgen.evaluator as evaluator
    import synthgen.trainer.evaluation as ev

    cfg = config(parts, tmp_path, {"vision": str(parts / "clip")}, "square64",
                 [{"name": "finetune", "train_lm": "full", "learning_rate": 1e-3, "max_steps": 1, "batch_size": 2}])
    cfg["eval"] = {"tasks": ["ja-vg-vqa-500"], "limit": 3, "options": {"max_new_tokens": 8}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(ev.importlib, "import_module", missing)
    assert train_main(tmp_path / "c.yaml", []) == 1
    assert "evaluator not available" in read_status(tmp_path / "run")["error"]
    assert not (tmp_path / "model").exists()  # refused before training, not after
    monkeypatch.undo()

    calls = []

    def fake_run(model_dir, *, tasks, limit, output_dir, **options):  # a run() entry point, as the contract allows
        calls.append((model_dir, tasks, limit, output_dir, options))
        assert load_model(model_dir).model is not None
        return {"ja-vg-vqa-500": {"rouge_l": 12.5}}

    monkeypatch.setattr(evaluator, "run", fake_run, raising=False)
    assert train_main(tmp_path / "c.yaml", []) == 0
    assert calls == [(str(tmp_path / "model"), ["ja-vg-vqa-500"], 3, str(tmp_path / "run" / "eval"),
                      {"max_new_tokens": 8})]
    assert read_status(tmp_path / "run")["eval"] == {"ja-vg-vqa-500": {"rouge_l": 12.5}}


def test_eval_section_runs_synthgens_evaluator_on_the_trained_model(parts, tmp_path):
    """The real evaluator (spec + runner) scores the freshly trained tiny model in-process on a local
    copy of JA-VG-VQA-500's format; a spec it would refuse fails before training."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import eval_data

    vg = eval_data.vg_vqa(tmp_path / "vg", images=2, per_image=1)
    cfg = config(parts, tmp_path, {"vision": str(parts / "clip")}, "square64",
                 [{"name": "finetune", "train_lm": "full", "learning_rate": 1e-3, "max_steps": 1, "batch_size": 2}])
    cfg["eval"] = {"tasks": ["ja-vg-vqa-500"], "limit": 2,
                   "options": {"sources": {"ja-vg-vqa-500": str(vg)}, "generation": {"max_tokens": 4},
                               "model": {"options": {"device": "cpu"}}, "label": "tiny"}}
    bad = {**cfg, "eval": {**cfg["eval"], "options": {"generation": {"max_tokens": 0}}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad, allow_unicode=True))
    assert train_main(tmp_path / "bad.yaml", []) == 1 and not (tmp_path / "model").exists()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert train_main(tmp_path / "c.yaml", []) == 0
    (metric, value), = read_status(tmp_path / "run")["eval"]["ja-vg-vqa-500"].items()
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert metric == report["tasks"]["ja-vg-vqa-500"]["headline"]["metric"] and 0 <= value <= 100
    assert report["label"] == "tiny" and report["tasks"]["ja-vg-vqa-500"]["n"] == 2
