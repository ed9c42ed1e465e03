"""Trainer building blocks: assembly, chat format, label masking, sources, mixing, packing, config."""

from __future__ import annotations

import json

import jinja2
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoProcessor, LlavaForConditionalGeneration

from synthgen.trainer import smoke
from synthgen.trainer.assemble import assemble
from synthgen.trainer.chat_format import ASSISTANT, chat_template, render
from synthgen.trainer.config import DataConfig, ModelConfig, SourceConfig, load_config
from synthgen.trainer.data import (
    IGNORE,
    Encoder,
    SkipRecord,
    TrainDataset,
    build_corpus,
    collate,
    epoch_items,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("parts")
    smoke.save_vision(d / "clip", "clip")
    smoke.save_vision(d / "siglip", "siglip")
    smoke.save_lm(d / "lm", smoke.shapes_corpus())
    smoke.save_shapes_dataset(d / "ds", 12)
    return d


@pytest.fixture(scope="module")
def clip(parts):
    return assemble(ModelConfig(vision=str(parts / "clip"), lm=str(parts / "lm")))


def encoder(a, max_length=64, system=None):
    return Encoder(a.tokenizer, "<image>", a.image_token_id, a.num_image_tokens, max_length, system)


def test_assembly_clip_and_siglip_token_counts(parts, clip):
    # 32x32 images, 8x8 patches: 16 patch tokens; CLIP's CLS is dropped ("default"), SigLIP has none.
    assert clip.num_image_tokens == 16
    assert clip.model.config.vision_feature_select_strategy == "default"
    sig = assemble(ModelConfig(vision=str(parts / "siglip"), lm=str(parts / "lm")))
    assert sig.num_image_tokens == 16
    assert sig.model.config.vision_feature_select_strategy == "full"
    assert clip.tokenizer.convert_ids_to_tokens(clip.image_token_id) == "<image>"
    assert clip.model.get_input_embeddings().weight.shape[0] == len(clip.tokenizer)


def test_other_feature_map_towers_are_refused_clearly(parts, tmp_path):
    """ConvNeXt towers are supported (test_trainer_towers); other 4-D encoders (ResNet) are refused."""
    from transformers import CLIPImageProcessor, ResNetConfig, ResNetModel

    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="ViT-style"):
        assemble(ModelConfig(vision=str(tmp_path), lm=str(parts / "lm")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        assemble(ModelConfig(vision=str(tmp_path / "missing"), lm=str(parts / "lm")))


def test_save_reload_round_trip_and_generate(tmp_path, clip):
    clip.model.save_pretrained(tmp_path)
    clip.processor.save_pretrained(tmp_path)
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    proc = AutoProcessor.from_pretrained(tmp_path)
    a, b = clip.model.state_dict(), model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n色は？"}]}],
                                      add_generation_prompt=True)
    assert prompt.endswith(ASSISTANT)
    inputs = proc(images=smoke.shape_image("赤", "丸", np.random.default_rng(0)), text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        ref = clip.model(**inputs).logits
        got = model(**inputs).logits
    assert torch.equal(ref, got)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_chat_template_matches_training_render():
    msgs = [{"role": "system", "content": "日本語で答えてください。"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n何色？"}]},
            {"role": "assistant", "content": "赤です。"}, {"role": "user", "content": "形は？"}]
    tpl = jinja2.Environment().from_string(chat_template("<image>"))
    for gen in (False, True):
        assert tpl.render(messages=msgs, eos_token="</s>", add_generation_prompt=gen) == \
            render(msgs, "</s>", "<image>", add_generation_prompt=gen)
    with_system = jinja2.Environment().from_string(chat_template("<image>", "あなたは助手です。"))
    assert with_system.render(messages=msgs[1:3], eos_token="</s>").startswith("あなたは助手です。\nユーザー: ")


def test_labels_cover_only_assistant_replies(clip):
    enc = encoder(clip, max_length=200)
    msgs = [{"role": "user", "content": "<image>\n" + smoke.QUESTION}, {"role": "assistant", "content": "赤です。"},
            {"role": "user", "content": "形は？"}, {"role": "assistant", "content": "丸です。"}]
    ids, labels = enc.encode(msgs, has_image=True)
    tok = clip.tokenizer
    learned = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert learned == "赤です。</s>丸です。</s>"
    assert all(lab == IGNORE for t, lab in zip(ids, labels, strict=True) if t == clip.image_token_id)
    assert ids.count(clip.image_token_id) == 16
    # every labelled token is exactly the input token (shift happens in the loss)
    assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels, strict=True))


def test_encoder_adds_missing_placeholder_truncates_and_skips(clip):
    enc = encoder(clip, max_length=200)
    ids, _ = enc.encode([{"role": "user", "content": "何色？"}, {"role": "assistant", "content": "赤"}], has_image=True)
    assert ids.count(clip.image_token_id) == 16
    with pytest.raises(SkipRecord, match="no assistant"):
        enc.encode([{"role": "user", "content": "<image>"}], has_image=True)
    with pytest.raises(SkipRecord, match="placeholders"):
        enc.encode([{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "a"}], True)
    short = encoder(clip, max_length=20)
    with pytest.raises(SkipRecord, match="image tokens do not fit"):
        short.encode([{"role": "user", "content": "前置き" * 10 + "<image>"}, {"role": "assistant", "content": "赤"}], True)
    ids, labels = encoder(clip, max_length=30).encode(
        [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "赤です。" * 20}], True)
    assert len(ids) == len(labels) == 30


def test_sources_mix_weights_llava_json_and_packing(parts, clip, tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    smoke.shape_image("青", "丸", np.random.default_rng(1)).save(img / "a.png")
    rows = [{"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\n何色？"},
                                                           {"from": "gpt", "value": "青です。"}]},
            {"id": "2", "conversations": [{"from": "human", "value": "こんにちは"}, {"from": "gpt", "value": "はい"}]},
            {"id": "3", "conversations": [{"from": "robot", "value": "?"}]},
            {"id": "4", "image": ["a.png", "a.png"], "conversations": [{"from": "human", "value": "<image><image>"},
                                                                      {"from": "gpt", "value": "同じ"}]},
            {"id": "5", "image": ["a.png"], "conversations": [{"from": "human", "value": "<image>"},
                                                             {"from": "gpt", "value": "青"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(rows, ensure_ascii=False))
    cfg = DataConfig(sources=[SourceConfig(path=str(parts / "ds"), weight=0.5),
                              SourceConfig(path=str(tmp_path / "llava.json"), image_root=str(img), weight=3)],
                     max_length=64, packing=True)
    corpus = build_corpus(cfg, encoder(clip))
    assert len(corpus.examples) == 12 + 3 and sum(corpus.skipped.values()) == 2
    from_ds = sum(1 for i in corpus.order if corpus.examples[i].source == 0)
    assert from_ds == 6 and len(corpus.order) == 6 + 3 * 3
    items = epoch_items(corpus, 0, 0, packing=True, max_length=64)
    assert sorted(i for it in items for i in it) == sorted(corpus.order.tolist())
    assert all(sum(len(corpus.examples[i].input_ids) for i in it) <= 64 for it in items if len(it) > 1)
    ds = TrainDataset(corpus, items, clip.processor.image_processor)
    batch = collate([ds[i] for i in range(len(ds))], clip.tokenizer.pad_token_id)
    n_images = sum(corpus.examples[i].has_image for it in items for i in it)
    assert batch["pixel_values"].shape[0] == n_images
    assert int((batch["input_ids"] == clip.image_token_id).sum()) == 16 * n_images
    assert "position_ids" in batch and "attention_mask" not in batch
    assert sorted(batch.pop("example_ids").tolist()) == sorted(corpus.order.tolist())
    with torch.no_grad():
        loss = clip.model(**batch).loss
    assert torch.isfinite(loss)


def test_packed_examples_do_not_attend_to_each_other(parts, clip):
    cfg = DataConfig(sources=[SourceConfig(path=str(parts / "ds"))], max_length=200, packing=True)
    corpus = build_corpus(cfg, encoder(clip, max_length=200))
    ds = TrainDataset(corpus, [[0, 1], [1]], clip.processor.image_processor)
    packed = collate([ds[0]], clip.tokenizer.pad_token_id)
    alone = collate([ds[1]], clip.tokenizer.pad_token_id)
    assert packed.pop("example_ids").tolist() == [0, 1] and alone.pop("example_ids").tolist() == [1]
    n0 = len(corpus.examples[0].input_ids)
    with torch.no_grad():
        logits_packed = clip.model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits
        logits_alone = clip.model(**{k: v for k, v in alone.items() if k != "labels"}, use_cache=False).logits
    assert torch.allclose(logits_packed[0, n0:], logits_alone[0], atol=1e-5)


def test_config_files_overrides_and_errors(tmp_path):
    (tmp_path / "c.toml").write_text(
        'output_dir = "out"\n[model]\nvision = "v"\nlm = "l"\n[data]\nsources = [{path = "d"}]\n')
    cfg = load_config(tmp_path / "c.toml", ["stages.1.train_lm=lora", "precision=fp32"])
    assert [s.learning_rate for s in cfg.stages] == [1e-3, 2e-5]
    assert cfg.stages[1].train_lm == "lora" and cfg.precision == "fp32"
    assert cfg.stages[0].warmup_ratio == 0.03 and cfg.stages[0].scheduler == "cosine"
    (tmp_path / "c.yaml").write_text("output_dir: o\nmodel: {vision: v}\ndata: {sources: []}\n")
    with pytest.raises(ValidationError) as err:
        load_config(tmp_path / "c.yaml")
    assert "model.lm is required" in str(err.value)
    (tmp_path / "d.yaml").write_text("output_dir: o\nmodel: {vision: v, lm: l}\ndata: {sources: []}\n")
    with pytest.raises(ValidationError, match=r"data.sources is empty and stages \['pretrain', 'finetune'\]"):
        load_config(tmp_path / "d.yaml")
    load_config(tmp_path / "d.yaml", ["stages.0.sources=[{path: a}]", "stages.1.sources=[{path: b}]"])
    with pytest.raises(ValidationError, match="trains nothing"):
        load_config(tmp_path / "c.toml", ["stages.0.train_projector=false"])
    with pytest.raises(ValidationError, match="repo_id"):
        load_config(tmp_path / "c.toml", ["push_to_hub.repo_id=not a repo"])


def test_deepspeed_configs_and_zero3_projector_guard(tmp_path):
    from synthgen.trainer.configs import HERE
    from synthgen.trainer.saving import check_projector

    for name in ("zero2", "zero3"):
        ds = json.loads((HERE / f"deepspeed_{name}.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
    z3 = json.loads((HERE / "deepspeed_zero3.json").read_text())["zero_optimization"]
    assert z3["stage3_gather_16bit_weights_on_model_save"] is True  # else the projector saves empty
    base = {"model": {"vision": "v", "lm": "l"}, "data": {"sources": [{"path": "d"}]}, "output_dir": "o"}
    from synthgen.trainer.config import TrainConfig

    assert TrainConfig.model_validate({**base, "deepspeed": "zero3"}).deepspeed == str(HERE / "deepspeed_zero3.json")
    with pytest.raises(ValidationError, match="not found"):
        TrainConfig.model_validate({**base, "deepspeed": str(tmp_path / "nope.json")})
    lora = [{"name": "s", "train_lm": "lora", "learning_rate": 1e-4}]
    with pytest.raises(ValidationError, match="LoRA under ZeRO-3"):
        TrainConfig.model_validate({**base, "deepspeed": "zero3", "stages": lora})
    TrainConfig.model_validate({**base, "deepspeed": "zero2", "stages": lora})
    # what a ZeRO-3 rank holds without gathering: zero-size placeholders
    full = {"model.multi_modal_projector.linear_1.weight": torch.ones(2, 2)}
    assert set(check_projector(full)) == {"multi_modal_projector.linear_1.weight"}
    with pytest.raises(RuntimeError, match="empty"):
        check_projector({"model.multi_modal_projector.linear_1.weight": torch.empty(0)})
    with pytest.raises(RuntimeError, match="no projector"):
        check_projector({"lm_head.weight": torch.ones(1)})


def test_push_to_hub_checks_its_arguments(tmp_path, monkeypatch):
    from synthgen.trainer.config import HubConfig
    from synthgen.trainer.hub import push_model

    hub = HubConfig(repo_id="someone/llava-ja", token_env="SYNTHGEN_TEST_HUB_TOKEN")
    with pytest.raises(FileNotFoundError, match="no saved model"):
        push_model(tmp_path, hub)
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.delenv("SYNTHGEN_TEST_HUB_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SYNTHGEN_TEST_HUB_TOKEN"):
        push_model(tmp_path, hub)
    with pytest.raises(ValidationError):
        HubConfig(repo_id="../etc")


def test_cli_wrapper_reports_config_errors(tmp_path):
    import typer
    from typer.testing import CliRunner

    from synthgen.trainer.cli import train_command

    app = typer.Typer()
    app.command("train")(train_command)
    app.command("noop")(lambda: None)  # two commands, as in synthgen's CLI
    (tmp_path / "bad.yaml").write_text("output_dir: o\nmodel: {vision: v}\ndata: {sources: [{path: d}]}\n")
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "bad.yaml"), "precision=fp32"])
    assert result.exit_code == 2
    assert "model.lm is required" in result.output
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "bad.yaml"), "nonsense"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_launch_status_reads_the_run_folder(tmp_path):
    import subprocess
    import sys

    from synthgen.trainer import launch
    from synthgen.trainer.progress import write_status

    assert launch.status(tmp_path)["state"] == "failed"  # nothing there
    write_status(tmp_path, state="running", stage="pretrain", step=3, total_steps=10, loss=1.5, output_dir="o")
    assert launch.status(tmp_path)["state"] == "running"  # just started, pid not written yet
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "pid").write_text(str(dead.pid))
    (tmp_path / "train.log").write_text("line 1\nline 2\n")
    st = launch.status(tmp_path)
    assert st["state"] == "failed" and st["step"] == 3 and st["total_steps"] == 10 and st["loss"] == 1.5
    assert st["log_tail"] == "line 1\nline 2" and st["stage"] == "pretrain" and st["output_dir"] == "o"
    launch.cancel(tmp_path)  # the process is gone: only the marker is left
    assert launch.status(tmp_path)["state"] == "cancelled"
    write_status(tmp_path, state="succeeded")
    assert launch.status(tmp_path)["state"] == "succeeded"
