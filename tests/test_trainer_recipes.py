"""Every shipped seed recipe: valid as shipped, and its tiny stand-in runs all stages, saves, reloads, generates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from synthgen.trainer import recipes, smoke
from synthgen.trainer.cli import train_main
from synthgen.trainer.config import TrainConfig
from synthgen.trainer.inference import generate, load_model
from synthgen.trainer.progress import read_status
from synthgen.trainer.train import read_seen, training_data

torch.set_num_threads(1)

# recipe -> (stage names, tower model_type, LM model_type, image tokens)
EXPECTED = {
    "seed000_llava_tinyllama": (["pretrain", "finetune"], "clip_vision_model", "llama", 16),
    "seed001_convllava_jp": (["projector", "vision", "instruct"], "synthgen_conv_tower", "gpt2", 16),
    "seed002_llama3v": (["pretrain", "sft"], "siglip_vision_model", "llama", 16),
    "seed003_tanuki_vision": (["simple", "complex"], "siglip_vision_model", "tanuki", 16),  # remote-code MoE
}


def test_every_recipe_is_shipped_and_valid():
    assert recipes.names() == sorted(EXPECTED)
    for name in recipes.names():
        cfg = TrainConfig.model_validate(recipes.load(name))
        assert [s.name for s in cfg.stages] == EXPECTED[name][0]
        assert all(s.sources for s in cfg.stages)  # each stage names its own data
    convllava = TrainConfig.model_validate(recipes.load("seed001_convllava_jp"))
    assert convllava.model.image_size == 768 and convllava.model.conv_extra_stage
    assert [s.train_vision for s in convllava.stages] == [False, True, False]
    assert [s.learning_rate for s in convllava.stages] == [3e-4, 2e-5, 2e-5]
    assert [s.optimizer for s in convllava.stages] == ["adamw", "adamw_8bit", "adamw_8bit"]
    tanuki = TrainConfig.model_validate(recipes.load("seed003_tanuki_vision"))
    assert tanuki.model.trust_remote_code and tanuki.deepspeed.endswith("deepspeed_zero3.json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; a GPU machine would start the real run")
@pytest.mark.parametrize("name, needs", [("seed001_convllava_jp", "stages.1.optimizer=adamw_8bit"),
                                         ("seed002_llama3v", "deepspeed=deepspeed_zero3.json"),
                                         ("seed003_tanuki_vision", "deepspeed=deepspeed_zero3.json")])
def test_real_recipes_say_what_needs_a_gpu(name, needs, tmp_path):
    cfg = recipes.load(name)
    cfg.update(output_dir=str(tmp_path / "o"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert train_main(tmp_path / "c.yaml", []) == 1
    error = read_status(tmp_path / "o" / "run")["error"]
    assert "no CUDA GPU is present" in error and needs in error


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tiny_recipe_runs_every_stage_reloads_and_generates(name, tmp_path):
    """`synthgen train --config` on the recipe's stand-in: every stage, its own data, saved, reloaded, generating."""
    from typer.testing import CliRunner

    from synthgen.service.cli import app

    stages, tower, lm, tokens = EXPECTED[name]
    config = recipes.tiny(name, tmp_path / "tiny")
    result = CliRunner().invoke(app, ["train", "--config", str(config)])  # `synthgen train --config`
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "tiny" / "run"
    assert read_status(run_dir)["state"] == "succeeded"
    summary = training_data(tmp_path / "tiny" / "model")
    assert [s["stage"] for s in summary] == stages and all(s["steps"] == 2 for s in summary)
    cfg = yaml.safe_load(config.read_text())
    for stage, s in zip(cfg["stages"], summary, strict=True):
        assert [src["path"] for src in s["sources"]] == [src["path"] for src in stage["sources"]]
        seen = read_seen(run_dir, stage["name"])
        assert len(seen) == 4 and {src for src, _ in seen} <= set(range(len(stage["sources"])))
    for stage in stages[:-1]:  # every stage's model was saved on the way
        assert (tmp_path / "tiny" / "model" / "stages" / stage / "mm_projector.safetensors").exists()
    loaded = load_model(tmp_path / "tiny" / "model", trust_remote_code=lm == "tanuki")
    assert loaded.model.config.vision_config.model_type == tower
    assert loaded.model.config.text_config.model_type == lm
    assert loaded.model.config.image_seq_length == tokens
    size = 64 if tower == "synthgen_conv_tower" else 32
    images = [smoke.shape_image("青", "丸", np.random.default_rng(i), size) for i in range(2)]
    answers = generate(loaded, images, [smoke.QUESTION, "形は？"], max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    notes = json.loads((tmp_path / "tiny" / "tiny_notes.json").read_text())
    assert notes["recipe"] == name and any("random tiny" in n for n in notes["changes"])


def test_tanuki_recipe_on_a_qwen2_moe_stand_in(tmp_path):
    """The other transformers MoE family (shared expert + routed experts) through the same two stages."""
    config = recipes.tiny("seed003_tanuki_vision", tmp_path / "q", lm_family="qwen2_moe")
    assert train_main(config, []) == 0
    loaded = load_model(tmp_path / "q" / "model")
    assert loaded.model.config.text_config.model_type == "qwen2_moe"
    assert [s["stage"] for s in training_data(tmp_path / "q" / "model")] == ["simple", "complex"]


def test_tanuki_stand_in_is_remote_code_moe_that_reloads_and_resumes_in_a_fresh_process(tmp_path, monkeypatch):
    """Like Tanuki-8x8B: the LM's classes ship in its folder. The saved VLM carries them; a new process
    refuses it without trust_remote_code, loads and generates with it, and resumes a stage from it."""
    import os
    import subprocess
    import sys

    from synthgen.trainer.train import moe_blocks

    config = recipes.tiny("seed003_tanuki_vision", tmp_path / "t")
    assert train_main(config, []) == 0
    model_dir = tmp_path / "t" / "model"
    assert {"configuration_tanuki.py", "modeling_tanuki.py"} <= {p.name for p in model_dir.iterdir()}
    loaded = load_model(model_dir, trust_remote_code=True)
    assert [b.__name__ for b in moe_blocks(loaded.model)] == ["MixtralSparseMoeBlock"]  # the MoE ZeRO-3 leaves
    # stage 2 again in a new process, from the saved stage 1 (what a resume or a ZeRO-3 reload does)
    run_dir = tmp_path / "t" / "run"
    (run_dir / "stages" / "complex.done.json").unlink()
    (model_dir / "model.safetensors").unlink()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    script = (
        "import sys, numpy as np\n"
        "from synthgen.trainer.cli import train_main\n"
        "from synthgen.trainer.inference import load_model, generate\n"
        "from synthgen.trainer import smoke\n"
        "try:\n"
        "    load_model(sys.argv[2])\n"
        "    print('LOADED WITHOUT TRUST')\n"
        "except ValueError as e:\n"
        "    print('REFUSED', e)\n"
        "assert train_main(sys.argv[1], []) == 0\n"
        "m = load_model(sys.argv[2], trust_remote_code=True)\n"
        "print('CLASS', type(m.model.model.language_model).__name__)\n"
        "print('ANSWER', generate(m, [smoke.shape_image('赤', '丸', np.random.default_rng(0))], ['色は？'], 3))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(config), str(model_dir)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED" in proc.stdout and "trust_remote_code=True" in proc.stdout
    assert "CLASS TanukiModel" in proc.stdout and "ANSWER [" in proc.stdout
    assert read_status(run_dir)["state"] == "succeeded"
    assert (model_dir / "model.safetensors").exists()
