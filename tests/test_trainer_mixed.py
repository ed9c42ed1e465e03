"""Per-stage data and mixed image/text batches: which rows each stage saw, text-only rows, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from synthgen.trainer import smoke
from synthgen.trainer import train as train_mod
from synthgen.trainer.cli import train_main
from synthgen.trainer.config import TrainConfig
from synthgen.trainer.data import collate
from synthgen.trainer.progress import read_status
from synthgen.trainer.train import Run, StepModule, apply_stage, read_seen, training_data

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed-parts")
    smoke.save_vision(d / "v")
    smoke.save_lm(d / "lm", smoke.shapes_corpus() + ["詳しくは"] * 3)
    smoke.save_shapes_dataset(d / "captions", 10, seed=1)  # stage 1: image rows only
    smoke.save_shapes_dataset(d / "mixed", 6, seed=2, text_only=4)  # image rows with text-only rows between
    smoke.save_llava_json(d / "instruct", 8, seed=3)  # stage 2: LLaVA JSON
    return d


def base(parts: Path, out: Path, stages: list[dict], **extra) -> dict:
    cfg = {"model": {"vision": str(parts / "v"), "lm": str(parts / "lm")},
           "data": {"sources": [{"path": str(parts / "mixed")}], "max_length": 64, "num_workers": 0},
           "stages": stages, "output_dir": str(out / "model"), "run_dir": str(out / "run"), "precision": "fp32",
           "logging_steps": 1, "save_steps": 100, "report_to": [], "feature_cache_dir": str(parts / "cache")}
    cfg.update(extra)
    return cfg


def write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def test_text_only_batch_in_a_projector_stage_is_what_crashed(parts, tmp_path):
    """The crash users hit: a text-only batch through a projector-only stage has no grad path."""
    run = Run(TrainConfig.model_validate(base(parts, tmp_path, [{"name": "p", "learning_rate": 1e-3}])))
    a = run.ensure_model(None)
    corpus = run.corpus
    ex = next(ex for ex in corpus.examples if not ex.has_image)
    batch = collate([{"input_ids": torch.from_numpy(ex.input_ids.astype("int64")),
                      "labels": torch.from_numpy(ex.labels.astype("int64"))}], a.tokenizer.pad_token_id)
    del batch["example_ids"]
    loss = StepModule(apply_stage(a.model, run.cfg.stages[0]))(**batch)
    with pytest.raises(RuntimeError, match="does not require grad"):
        loss.backward()


def test_text_rows_skipped_in_projector_stage_and_trained_in_lm_stage_at_batch_size_1(parts, tmp_path):
    """Image + text rows mixed, batch size 1 and 3: the projector stage skips (and counts) the text rows,
    the LM stage trains on them too; nothing crashes, cached or live tower."""
    stages = [{"name": "pretrain", "learning_rate": 1e-3, "epochs": 1, "batch_size": 1},
              {"name": "pretrain-live", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 3,
               "cached_features": False},
              {"name": "finetune", "train_lm": "full", "learning_rate": 1e-3, "epochs": 1, "batch_size": 1},
              {"name": "finetune-mixed", "train_lm": "lora", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 3,
               "lora": {"r": 2, "alpha": 4, "dropout": 0.0}}]
    cfg = base(parts, tmp_path, stages, gradient_checkpointing=True)  # LoRA + checkpointing on text-only batches too
    assert train_main(write(cfg, tmp_path / "c.yaml"), []) == 0
    run_dir = tmp_path / "run"
    assert read_status(run_dir)["state"] == "succeeded"
    import datasets

    images = [i for i, im in enumerate(datasets.load_from_disk(str(parts / "mixed"))["image"]) if im is not None]
    assert len(images) == 6
    pre = read_seen(run_dir, "pretrain")
    assert sorted(pre) == [(0, r) for r in images]  # the 6 image rows, once each; the 4 text rows left out
    fin = read_seen(run_dir, "finetune")
    assert sorted(fin) == [(0, r) for r in range(10)]  # every row, text ones included
    summary = {s["stage"]: s for s in training_data(tmp_path / "model")}
    assert summary["pretrain"]["text_only_rows_skipped"] == 4 and summary["pretrain"]["steps"] == 6
    assert summary["finetune"]["text_only_rows_skipped"] == 0 and summary["finetune"]["steps"] == 10
    lines = [json.loads(x) for x in (run_dir / "data" / "finetune-mixed.seen.jsonl").read_text().splitlines()]
    assert [len(x["rows"]) for x in lines] == [3, 3]


def test_stages_read_their_own_sources(parts, tmp_path):
    """Stage 1 on captions (a synthgen folder), stage 2 on LLaVA JSON + the mixed folder at weight 0.5."""
    stages = [{"name": "align", "learning_rate": 1e-3, "epochs": 1, "batch_size": 2,
               "sources": [{"path": str(parts / "captions")}]},
              {"name": "instruct", "train_lm": "full", "learning_rate": 1e-3, "epochs": 1, "batch_size": 2,
               "sources": [{"path": str(parts / "instruct" / "data.json")},
                           {"path": str(parts / "mixed"), "weight": 0.5}]}]
    cfg = base(parts, tmp_path, stages)
    cfg["data"]["sources"] = []  # every stage names its own
    assert train_main(write(cfg, tmp_path / "c.yaml"), []) == 0
    align, instruct = read_seen(tmp_path / "run", "align"), read_seen(tmp_path / "run", "instruct")
    assert sorted(align) == [(0, r) for r in range(10)]
    assert sorted(r for s, r in instruct if s == 0) == list(range(8))  # all LLaVA JSON rows
    mixed = [r for s, r in instruct if s == 1]
    assert len(mixed) == 5 and len(set(mixed)) == 5  # half of the 10 mixed rows, drawn without repeats
    summary = training_data(tmp_path / "model")
    assert [s["stage"] for s in summary] == ["align", "instruct"]
    assert [src["path"] for src in summary[1]["sources"]] == [str(parts / "instruct" / "data.json"),
                                                               str(parts / "mixed")]
    assert [src["items_per_epoch"] for src in summary[1]["sources"]] == [8, 5]


def test_projector_stage_without_image_rows_is_skipped_not_crashed(parts, tmp_path):
    """A persona-qa style text-only dataset with the default two stages: stage 1 is skipped, stage 2 trains."""
    import datasets

    rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in smoke.TEXT_QA] * 2
    datasets.Dataset.from_dict({"messages": rows}).save_to_disk(str(tmp_path / "text"))
    cfg = base(parts, tmp_path, [{"name": "pretrain", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 2},
                                 {"name": "finetune", "train_lm": "full", "learning_rate": 1e-3, "max_steps": 2,
                                  "batch_size": 2}])
    cfg["data"]["sources"] = [{"path": str(tmp_path / "text")}]
    assert train_main(write(cfg, tmp_path / "c.yaml"), []) == 0
    summary = {s["stage"]: s for s in training_data(tmp_path / "model")}
    assert "no rows with an image" in summary["pretrain"]["skipped"]
    assert summary["pretrain"]["steps"] == 0 and summary["pretrain"]["text_only_rows_skipped"] == 8
    assert summary["finetune"]["steps"] == 2
    assert len(read_seen(tmp_path / "run", "finetune")) == 4
    # the LM learned from the text rows: its weights moved from the pretrained ones
    before = load_file(str(parts / "lm" / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    after = load_file(str(tmp_path / "model" / "model.safetensors"))
    key = next(k for k in after if k.endswith("layers.0.self_attn.q_proj.weight") and "vision" not in k)
    assert before.shape == after[key].shape and not torch.equal(before, after[key])


def test_resume_is_exact_with_per_stage_data(parts, tmp_path, monkeypatch):
    """Stopped in stage 2 (its own mixed sources, grad accumulation), resumed: same weights, same rows seen."""
    def cfg(name):
        stages = [{"name": "align", "learning_rate": 1e-3, "max_steps": 2, "batch_size": 2,
                   "sources": [{"path": str(parts / "captions")}]},
                  {"name": "instruct", "train_lm": "full", "learning_rate": 1e-3, "max_steps": 5, "batch_size": 3,
                   "grad_accum": 2, "sources": [{"path": str(parts / "instruct" / "data.json")},
                                                {"path": str(parts / "mixed"), "weight": 0.5}]}]
        return write(base(parts, tmp_path / name, stages), tmp_path / f"{name}.yaml")

    assert train_main(cfg("straight"), []) == 0
    stop_cfg = cfg("stopped")
    real_cancel = train_mod.cancel_requested
    monkeypatch.setattr(train_mod, "cancel_requested",
                        lambda d: read_status(d).get("stage") == "instruct" and read_status(d).get("step") == 2)
    assert train_main(stop_cfg, []) == 130
    monkeypatch.setattr(train_mod, "cancel_requested", real_cancel)
    # a change to the stage's data makes the checkpoint unusable, said clearly instead of resuming wrongly
    changed = yaml.safe_load(stop_cfg.read_text())
    changed["stages"][1]["sources"][1]["weight"] = 1.0
    assert train_main(write(changed, tmp_path / "changed.yaml"), []) == 1
    assert "data changed since checkpoint" in read_status(tmp_path / "stopped" / "run")["error"]
    assert train_main(stop_cfg, []) == 0
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_seen(tmp_path / "straight" / "run", "instruct") == read_seen(tmp_path / "stopped" / "run", "instruct")
    # 13 rows an epoch in micro-batches of 3,3,3,3,1 (steps of 2 micro, the last alone), then 2 steps of 6
    assert len(read_seen(tmp_path / "stopped" / "run", "instruct")) == 13 + 12


def test_rest_confines_each_stages_own_sources(tmp_path):
    """Per-stage sources are paths too: the REST service keeps them under the data root like data.sources."""
    from fastapi import HTTPException

    from synthgen.service.api.trainings import confine_config

    root = tmp_path / "root"
    for d in ("jobs/a", "models/v", "models/l"):
        (root / d).mkdir(parents=True)
    body = {"model": {"vision": "models/v", "lm": "models/l"},
            "data": {"sources": []}, "output_dir": "models/x",
            "stages": [{"name": "s", "learning_rate": 1e-3, "sources": [{"path": "jobs/a", "image_root": "jobs/a"}]}]}
    cfg = confine_config(body, root, root / "runs" / "t")
    assert cfg["stages"][0]["sources"][0] == {"path": str(root / "jobs" / "a"), "image_root": str(root / "jobs" / "a")}
    assert body["stages"][0]["sources"][0]["path"] == "jobs/a"  # the caller's dict is left alone
    for bad in ({"path": "/etc"}, {"path": "jobs/a", "image_root": "../../etc"}):
        body["stages"][0]["sources"] = [bad]
        with pytest.raises(HTTPException) as err:
            confine_config(body, root, root / "runs" / "t")
        assert err.value.status_code == 422 and "stages" in str(err.value.detail)


def test_rest_limits_the_eval_section(tmp_path):
    """eval.options can carry paths and a judge endpoint: over REST only generation settings and a label pass."""
    from fastapi import HTTPException

    from synthgen.service.api.trainings import confine_config

    root = tmp_path / "root"
    for d in ("jobs/a", "models/v", "models/l"):
        (root / d).mkdir(parents=True)
    body = {"model": {"vision": "models/v", "lm": "models/l"}, "data": {"sources": [{"path": "jobs/a"}]},
            "output_dir": "models/x", "eval": {"options": {"judge": {"base_url": "http://10.0.0.1/v1"}}}}
    with pytest.raises(HTTPException) as err:
        confine_config(body, root, root / "runs" / "t")
    assert err.value.status_code == 422 and "['judge']" in str(err.value.detail)
    body["eval"] = {"tasks": ["ja-vg-vqa-500"], "limit": 5, "options": {"generation": {"max_tokens": 64}}}
    assert confine_config(body, root, root / "runs" / "t")["eval"] == body["eval"]
