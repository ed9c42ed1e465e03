"""Publishing to a Hub endpoint: every check runs against `LoopbackHub`, a loopback server that
speaks the Hub's HTTP API (repo create, preupload, LFS batch + PUT, commit, validate-yaml, tree,
resolve), so huggingface_hub and datasets run unmodified over real HTTP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import datasets
import pytest
from huggingface_hub import DatasetCard
from publish_runs import hub_online, hub_reads, image_run, plain_rows, text_run

from synthgen.engine.runs import open_run
from synthgen.publish.card import SourceInfo, validate_card
from synthgen.publish.hub import Backoff, push
from synthgen.publish.loopback_hub import LoopbackHub


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    hub_online(monkeypatch)


FAST = Backoff(attempts=4, first=0.01, cap=0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return image_run(tmp, 6), text_run(tmp, 3)


def test_push_two_configs_card_private_and_load_dataset(runs, tmp_path, monkeypatch, caplog):
    cap, pqa = runs
    caplog.set_level(logging.DEBUG)
    with LoopbackHub() as hub:
        monkeypatch.setenv("HF_TOKEN", hub.token)  # the token comes from the environment, not an argument
        first = push(cap, "org/ja-vqa", endpoint=hub.endpoint, backoff=FAST, row_group=2, max_shard_bytes=1,
                     files_per_commit=1, staging=tmp_path / "s1",
                     sources=[SourceInfo("someorg/photos", "cc-by-sa-4.0", attribution="Photos by A. Person")])
        second = push(pqa, "org/ja-vqa", endpoint=hub.endpoint, backoff=FAST, staging=tmp_path / "s2",
                      license="cc-by-sa-4.0")
        repo = hub.repo("org/ja-vqa")
        assert repo.private and first.private is True
        assert (first.shards, first.files_sent, first.commits) == (3, 3, 4)  # one commit per shard, then the card
        assert sorted(p for p in repo.files if p.endswith(".parquet")) == [
            "caption-translate/train-00000-of-00003.parquet", "caption-translate/train-00001-of-00003.parquet",
            "caption-translate/train-00002-of-00003.parquet", "persona-qa/train-00000-of-00001.parquet"]
        assert {"caption-translate/samples/train-0.jpg", "caption-translate/synthgen_manifest-train.json",
                "persona-qa/synthgen_manifest-train.json", "README.md"} <= set(repo.files)
        # Every Hub API call carries the token; the presigned LFS upload URLs get none (as on S3).
        assert all(auth == f"Bearer {hub.token}" for key, auth in hub.auth_headers_seen if "/lfs-upload/" not in key)
        assert all(auth == "" for key, auth in hub.auth_headers_seen if "/lfs-upload/" in key)
        assert hub.token not in json.dumps(first.public()) + json.dumps(second.public()) + caplog.text

        card = DatasetCard(repo.files["README.md"].blob.read_text(encoding="utf-8"))
        validate_card(str(card))
        meta = card.data.to_dict()
        assert meta["language"] == ["ja"] and meta["license"] == "cc-by-sa-4.0"
        assert meta["annotations_creators"] == ["machine-generated"] and meta["size_categories"] == ["n<1K"]
        assert meta["source_datasets"] == ["extended|someorg/photos"]
        assert set(meta["task_categories"]) == {"image-to-text", "visual-question-answering", "text-generation",
                                                "question-answering"}
        assert meta["configs"] == [
            {"config_name": "caption-translate", "data_files": [{"split": "train", "path": "caption-translate/train-*"}]},
            {"config_name": "persona-qa", "data_files": [{"split": "train", "path": "persona-qa/train-*"}]}]
        body = card.text
        assert "someorg/photos" in body and "Photos by A. Person" in body  # the source is named
        assert "`vlm-m`" in body and "`llm-m`" in body and "temperature=0.7" in body
        manifest = open_run(cap).manifest()
        assert all(digest in body for digest in manifest["prompt_templates"].values())
        assert "![sample 1](caption-translate/samples/train-0.jpg)" in body
        assert body.count("<!-- synthgen:config caption-translate start -->") == 1  # merged, not appended twice

        with hub_reads(monkeypatch, hub.endpoint):
            for run, config in ((cap, "caption-translate"), (pqa, "persona-qa")):
                loaded = datasets.load_dataset("org/ja-vqa", config, split="train", cache_dir=str(tmp_path / "cache"))
                assert plain_rows(loaded) == plain_rows(open_run(run).dataset())
            assert isinstance(loaded.features["messages"], datasets.List)
            assert datasets.load_dataset("org/ja-vqa", "caption-translate", split="train",
                                         cache_dir=str(tmp_path / "cache")).features["image"] == datasets.Image()


def test_licence_conflict_is_refused_before_anything_is_sent(runs, tmp_path):
    cap, _ = runs
    with LoopbackHub() as hub, pytest.raises(ValueError, match="ShareAlike"):
        push(cap, "org/x", token=hub.token, endpoint=hub.endpoint, backoff=FAST, staging=tmp_path / "s",
             license="apache-2.0", sources=[SourceInfo("someorg/photos", "cc-by-sa-4.0")])
    assert not hub.repos and not hub.requests


def test_transient_5xx_is_retried_with_backoff(runs, tmp_path):
    cap, _ = runs
    with LoopbackHub() as hub:
        hub.inject(r"^POST /api/repos/create$", status=503, times=1)
        hub.inject(r"^POST /api/datasets/org/r/commit/", status=502, times=2)
        result = push(cap, "org/r", token=hub.token, endpoint=hub.endpoint, backoff=FAST, staging=tmp_path / "s")
        assert hub.injected == ["POST /api/repos/create", "POST /api/datasets/org/r/commit/main",
                                "POST /api/datasets/org/r/commit/main"]
        assert result.retries == 3 and result.commits == 2
        assert "README.md" in hub.repo("org/r").files


def test_interrupted_push_resumes_without_resending_finished_files(runs, tmp_path):
    cap, _ = runs
    kwargs = dict(token="", endpoint="", backoff=Backoff(attempts=2, first=0.01, cap=0.01), row_group=1,
                  max_shard_bytes=1, files_per_commit=1, staging=tmp_path / "s")
    with LoopbackHub() as hub:
        kwargs.update(token=hub.token, endpoint=hub.endpoint)
        # The Hub goes down for good after two commits: the push fails with shards 1-2 committed.
        outage = hub.inject(r"^POST /api/datasets/org/big/commit/", status=500, times=None, skip=2)
        with pytest.raises(Exception, match="500"):
            push(cap, "org/big", **kwargs)
        committed = sorted(p for p in hub.repo("org/big").files if p.endswith(".parquet"))
        assert committed == ["caption-translate/train-00000-of-00006.parquet",
                             "caption-translate/train-00001-of-00006.parquet"]
        assert (tmp_path / "s").exists()  # the staged shards are kept for the resume
        hub.faults.remove(outage)
        result = push(cap, "org/big", **kwargs)
        assert (result.shards, result.files_skipped, result.files_sent) == (6, 2, 4)
        shard_oids = {f.sha256 for p, f in hub.repo("org/big").files.items() if p.endswith(".parquet")}
        assert len(shard_oids) == 6
        assert all(hub.lfs_puts[oid] == 1 for oid in shard_oids)  # no shard's bytes went up twice
        assert not (tmp_path / "s").exists()


def test_cli_push_honours_hf_endpoint_and_hf_token(runs, tmp_path):
    cap, _ = runs
    with LoopbackHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf")}
        proc = subprocess.run([sys.executable, "-m", "synthgen.service.cli", "push", str(cap), "--repo", "org/cli",
                               "--public", "--config-name", "captions", "--split", "dev"],
                              capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["url"] == f"{hub.endpoint}/datasets/org/cli" and out["private"] is False
        assert hub.token not in proc.stdout + proc.stderr
        repo = hub.repo("org/cli")
        assert not repo.private and "captions/dev-00000-of-00001.parquet" in repo.files
        meta = DatasetCard(repo.files["README.md"].blob.read_text(encoding="utf-8")).data.to_dict()
        assert meta["configs"] == [{"config_name": "captions", "data_files": [{"split": "dev", "path": "captions/dev-*"}]}]
