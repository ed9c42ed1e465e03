"""Both stages on a tiny random LLaVA: frozen parts, cached features, resume, saved output, jobs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from synthgen.trainer import launch, smoke
from synthgen.trainer import train as train_mod
from synthgen.trainer.cli import train_main
from synthgen.trainer.config import TrainConfig
from synthgen.trainer.data import TrainDataset, collate, epoch_items
from synthgen.trainer.progress import read_status
from synthgen.trainer.train import Run, StepModule, run_stage

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("stage-parts")
    smoke.save_vision(d / "v")
    smoke.save_lm(d / "lm", smoke.shapes_corpus())
    smoke.save_shapes_dataset(d / "ds", 24)  # the layout synthgen's engine writes (image + messages)
    return d


def config(parts: Path, out: Path, **extra) -> dict:
    cfg = {"model": {"vision": str(parts / "v"), "lm": str(parts / "lm")},
           "data": {"sources": [{"path": str(parts / "ds")}], "max_length": 64, "num_workers": 0},
           "stages": [{"name": "pretrain", "learning_rate": 1e-2, "max_steps": 4, "batch_size": 4},
                      {"name": "finetune", "train_lm": "full", "learning_rate": 1e-3, "max_steps": 3, "batch_size": 4}],
           "output_dir": str(out / "model"), "run_dir": str(out / "run"), "precision": "fp32", "logging_steps": 1,
           "save_steps": 2, "report_to": [], "feature_cache_dir": str(parts / "cache")}
    cfg.update(extra)
    return cfg


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after, part: str) -> list[str]:
    return [k for k in before if part in k and not torch.equal(before[k], after[k])]


def test_stages_train_only_their_parts(parts, tmp_path):
    run = Run(TrainConfig.model_validate(config(parts, tmp_path)))
    run.ensure_model(None)
    before = snapshot(run.assembled.model)
    run_stage(run, 0, run.cfg.stages[0])
    after1 = snapshot(run.assembled.model)
    assert changed(before, after1, "vision_tower") == []
    assert changed(before, after1, "language_model") == [] and changed(before, after1, "lm_head") == []
    assert len(changed(before, after1, "multi_modal_projector")) == 4
    saved = load_file(str(tmp_path / "model" / "stages" / "pretrain" / "mm_projector.safetensors"))
    assert set(saved) == {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                          "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"}
    assert all(torch.equal(v, after1["model." + k]) for k, v in saved.items())

    run_stage(run, 1, run.cfg.stages[1])
    after2 = snapshot(run.assembled.model)
    assert changed(after1, after2, "vision_tower") == []
    assert changed(after1, after2, "language_model")
    assert len(changed(after1, after2, "multi_modal_projector")) == 4
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
    assert all(torch.equal(v, after2[k]) for k, v in reloaded.state_dict().items())
    AutoProcessor.from_pretrained(tmp_path / "model")


def test_lora_stage_saves_merged_model_and_adapter(parts, tmp_path):
    cfg = config(parts, tmp_path, gradient_checkpointing=True)
    cfg["stages"] = [{"name": "lora", "train_lm": "lora", "learning_rate": 1e-2, "max_steps": 2, "batch_size": 4,
                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}]
    run = Run(TrainConfig.model_validate(cfg))
    run.ensure_model(None)
    before = snapshot(run.assembled.model)
    run_stage(run, 0, run.cfg.stages[0])
    after = snapshot(run.assembled.model)
    assert after.keys() == before.keys()  # merged back: a plain LLaVA again
    assert changed(before, after, "vision_tower") == []
    assert changed(before, after, "language_model.layers")
    assert changed(before, after, "embed_tokens") == []
    assert (tmp_path / "model" / "lora_adapter" / "adapter_config.json").exists()
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
    assert all(torch.equal(v, after[k]) for k, v in reloaded.state_dict().items())


def test_cached_and_live_features_give_the_same_loss(parts, tmp_path):
    run = Run(TrainConfig.model_validate(config(parts, tmp_path)))
    a = run.ensure_model(None)
    sd = run.stage_data(run.cfg.stages[0])
    reader, rows = train_mod._feature_rows(run, Accelerator(cpu=True), sd)
    assert (rows[:, 0] >= 0).all()
    items = epoch_items(run.corpus, 0, 0, packing=False, max_length=64)[:6]
    live = collate([TrainDataset(run.corpus, items, a.processor.image_processor)[i] for i in range(6)], 0)
    cached = collate([TrainDataset(run.corpus, items, None, reader, rows)[i] for i in range(6)], 0)
    assert "pixel_values" in live and "vision_features" in cached and "pixel_values" not in cached
    assert "example_ids" in live
    step = StepModule(a.model).eval()
    with torch.no_grad():
        loss_live, loss_cached = step(**live), step(**cached)
    assert torch.allclose(loss_live, loss_cached, rtol=1e-5, atol=1e-6), (loss_live, loss_cached)
    # a different tower (other weights) never reads these features
    other = train_mod.vision_fingerprint(a.model, a.processor.image_processor)
    with torch.no_grad():
        a.model.model.vision_tower.parameters().__next__().add_(1.0)
    assert train_mod.vision_fingerprint(a.model, a.processor.image_processor) != other


def test_resume_continues_from_the_step_it_stopped_at(parts, tmp_path, monkeypatch):
    """`synthgen train` (train_main) on both stages, stopped in stage 2 and resumed, ends where a straight run does."""
    def cfg(name):
        c = config(parts, tmp_path / name)
        c["stages"][1].update(max_steps=6, batch_size=5, grad_accum=2)  # 24 rows: 5 micro-batches, 3 steps/epoch
        c["save_steps"] = 100
        c["report_to"] = ["tensorboard"]
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(c, allow_unicode=True))
        return tmp_path / f"{name}.yaml"

    assert train_main(cfg("straight"), []) == 0
    assert list((tmp_path / "straight" / "run").rglob("events.out.tfevents.*"))  # TensorBoard logs
    stop_cfg = cfg("stopped")
    real_cancel, real_status = train_mod.cancel_requested, train_mod.write_status
    monkeypatch.setattr(train_mod, "cancel_requested",
                        lambda d: read_status(d).get("stage") == "finetune" and read_status(d).get("step") == 4)
    assert train_main(stop_cfg, []) == 130
    run_dir = tmp_path / "stopped" / "run"
    assert read_status(run_dir)["state"] == "cancelled"
    assert (run_dir / "checkpoints" / "finetune" / "step-4" / "position.json").exists()
    monkeypatch.setattr(train_mod, "cancel_requested", real_cancel)
    seen = []
    monkeypatch.setattr(train_mod, "write_status", lambda d, **kw: (seen.append(kw), real_status(d, **kw))[1])
    assert train_main(stop_cfg, []) == 0
    steps = [(kw.get("stage"), kw["step"]) for kw in seen if kw.get("step") is not None]
    assert steps[:2] == [("finetune", 4), (None, 5)]  # pretrain skipped, finetune resumed at 4, next step is 5
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same weights as the run that never stopped
    LlavaForConditionalGeneration.from_pretrained(tmp_path / "stopped" / "model")


def wait_for(run_dir: Path, pred, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = launch.status(run_dir)
        if pred(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"timed out; last status {st}")


def test_training_job_reports_progress_and_cancels(parts, tmp_path, monkeypatch):
    """launch.start runs `python -m synthgen.trainer` as its own process; status follows it; cancel stops it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    cfg = config(parts, tmp_path)
    cfg["stages"][1]["max_steps"] = 100000
    run_dir = tmp_path / "job"
    pid = launch.start(cfg, run_dir)
    try:
        assert pid > 0 and (run_dir / "config.yaml").exists()
        st = wait_for(run_dir, lambda s: s["state"] != "running" or (s["stage"] == "finetune" and (s["step"] or 0) >= 2))
        assert st["state"] == "running", st["log_tail"]
        assert st["total_steps"] == 100000 and st["loss"] is not None and "finetune" in st["log_tail"]
        launch.cancel(run_dir)
        st = wait_for(run_dir, lambda s: s["state"] != "running", timeout=60)
    finally:  # never leave a 100000-step job behind when an assertion fails
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    assert st["state"] == "cancelled"
    assert list((run_dir / "checkpoints" / "finetune").glob("step-*/position.json"))
    stage1 = json.loads((run_dir / "stages" / "pretrain.done.json").read_text())["model_dir"]
    assert LlavaForConditionalGeneration.from_pretrained(stage1).config.image_seq_length == 16


def test_failed_job_reports_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"model": {"vision": str(tmp_path / "no-vision"), "lm": str(tmp_path / "no-lm")}, "data": {"sources": [{"path": str(tmp_path / "missing")}]},
           "output_dir": str(tmp_path / "o")}
    with pytest.raises(Exception, match="validation error"):
        launch.validate_config({**cfg, "precision": "fp8"})
    launch.start(cfg, tmp_path / "r")
    st = wait_for(tmp_path / "r", lambda s: s["state"] != "running")
    assert st["state"] == "failed" and "does not exist" in st["log_tail"]
    assert "no-vision" in (st["error"] or "")


def test_unreadable_images_cost_their_records_not_the_run(parts, tmp_path):
    import numpy as np

    img = tmp_path / "imgs"
    img.mkdir()
    rows = []
    for i in range(8):
        smoke.shape_image("赤" if i % 2 else "青", "丸", np.random.default_rng(i)).save(img / f"{i}.png")
        rows.append({"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\n何色？"},
                                                             {"from": "gpt", "value": "赤です。" if i % 2 else "青です。"}]})
    (img / "3.png").write_bytes(b"not an image")
    (img / "5.png").unlink()
    (tmp_path / "llava.json").write_text(json.dumps(rows, ensure_ascii=False))
    cfg = config(parts, tmp_path)
    cfg["data"]["sources"] = [{"path": str(tmp_path / "llava.json"), "image_root": str(img)}]
    cfg["feature_cache_dir"] = str(tmp_path / "cache")
    cfg["stages"] = [{"name": "cached", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 4},
                     {"name": "live", "train_vision": True, "learning_rate": 1e-3, "max_steps": 2, "batch_size": 4}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert train_main(tmp_path / "c.yaml", []) == 0
    assert read_status(tmp_path / "run")["state"] == "succeeded"
    keys = json.loads(next((tmp_path / "cache").rglob("shard-*.keys.json")).read_text())
    assert len(keys) == 6  # the corrupt and the missing image were left out


def test_two_processes_shard_the_data_and_save_once(parts, tmp_path, monkeypatch):
    """torchrun with 2 CPU processes (gloo): data is split between ranks, rank 0 reports and saves."""
    import subprocess

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = config(parts, tmp_path)
    cfg["stages"] = [{"name": "pretrain", "learning_rate": 1e-3, "epochs": 1, "batch_size": 4}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    # Its own process group, killed whole at the end: a timed-out launcher must not leave its
    # ranks blocked in a gloo barrier (they outlive a plain subprocess.run timeout).
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "synthgen.trainer", "--config", str(tmp_path / "c.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    st = read_status(tmp_path / "run")
    assert st["state"] == "succeeded" and st["total_steps"] == 3  # 24 rows / (4 per batch x 2 ranks)
    LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
