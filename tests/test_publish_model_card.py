"""The trained model's card: metadata through huggingface_hub's ModelCard, and the trainer's Hub
upload (trainer/hub.py push_model) sending it, checked against the loopback Hub."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard, constants
from publish_runs import hub_online

from synthgen.publish.loopback_hub import LoopbackHub
from synthgen.publish.model_card import build_model_card, write_model_card
from synthgen.trainer.config import HubConfig, TrainConfig
from synthgen.trainer.hub import push_model


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    hub_online(monkeypatch)


CONFIG = {"model": {"vision": "google/siglip-so400m-patch14-384", "lm": "llm-jp/llm-jp-3-1.8b"},
          "data": {"sources": [{"path": "my-org/ja-vqa"}, {"path": "/data/local-run"}]},
          "stages": [{"name": "pretrain", "learning_rate": 1e-3, "batch_size": 32, "max_steps": 100},
                     {"name": "finetune", "train_lm": "lora", "learning_rate": 2e-5, "batch_size": 16}],
          "output_dir": "models/llava-jp-demo"}


def test_model_card_metadata_and_body():
    text = build_model_card(TrainConfig.model_validate(CONFIG), scores={"jdocqa": {"accuracy": 0.4125}},
                            datasets_used=[{"name": "my-org/ja-vqa", "url": "http://hub.local/datasets/my-org/ja-vqa"}])
    card = ModelCard(text, ignore_metadata_errors=False)
    meta = card.data.to_dict()
    assert meta["base_model"] == ["google/siglip-so400m-patch14-384", "llm-jp/llm-jp-3-1.8b"]
    assert meta["datasets"] == ["my-org/ja-vqa"] and meta["language"] == ["ja"]
    assert meta["pipeline_tag"] == "image-text-to-text"
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["name"] == "jdocqa" and result["metrics"] == [{"type": "accuracy", "value": 0.4125}]
    body = card.text
    assert "[my-org/ja-vqa](http://hub.local/datasets/my-org/ja-vqa)" in body and "`/data/local-run`" in body
    assert "| finetune | projector, LM (lora) | 2e-05 | 16 x 1 |" in body
    assert "| jdocqa.accuracy | 0.4125 |" in body


def test_trainer_push_sends_the_model_card(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (model / "training_data.json").write_text(json.dumps({"stages": [
        {"stage": "pretrain", "steps": 100, "sources": [{"path": "my-org/ja-vqa", "rows": 1234}]}]}))
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\nold body\n")
    with LoopbackHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        push_model(model, HubConfig(repo_id="my-org/llava-jp"), TrainConfig.model_validate(CONFIG),
                   {"jdocqa": {"accuracy": 0.5}})
        repo = hub.repo("my-org/llava-jp", "model")
        assert repo.private and {"config.json", "README.md", "training_data.json"} <= set(repo.files)
        card = ModelCard(repo.files["README.md"].blob.read_text(encoding="utf-8"))
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"  # metadata already there is kept
    assert "old body" in card.text and "| pretrain | 100 | `my-org/ja-vqa` | 1234 |" in card.text
    # Writing again replaces our section rather than appending a second one.
    write_model_card(model, CONFIG)
    assert (model / "README.md").read_text(encoding="utf-8").count("<!-- synthgen:model-card -->") == 1
