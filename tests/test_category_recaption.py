"""category-recaption: balanced categories, caption-grounded answers, the filters, the CLI and resume."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time

import datasets
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gen_responders import RecaptionWriter
from image_responders import ANSWERS, CAPTIONS_JA, QUESTIONS, image_responder

from synthgen.engine.runner import run_job
from synthgen.generators.category_recaption import DEFAULT_CATEGORIES, Category, Dealer
from synthgen.generators.images.checks import mentions_caption
from synthgen.generators.images.samples import draw, encode, write_folder
from synthgen.generators.textcheck import is_japanese
from synthgen.loopback_server import LoopbackServer, last_user_text
from synthgen.spec import JobSpec

CLI = [sys.executable, "-m", "synthgen.service.cli"]


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _captioned_parquet(path, captions: list[str]) -> None:
    pq.write_table(pa.table({"image": [{"bytes": encode(draw(i)), "path": None} for i in range(len(captions))],
                             "text": captions}), path)


def test_dealer_tracks_weights_exactly():
    cats = [Category(name="a", label="A", instruction="-", weight=3), Category(name="b", label="B", instruction="-")]
    dealer = Dealer(cats, seed=1)
    counts = collections.Counter(c.name for _ in range(400) for c in dealer.deal("x", 1))
    assert counts == {"a": 300, "b": 100}
    three = [*cats, Category(name="c", label="C", instruction="-", weight=2)]
    dealer = Dealer(three, seed=2)
    picks = [[c.name for c in dealer.deal("x", 2)] for _ in range(300)]
    assert all(len(set(p)) == 2 for p in picks)  # distinct categories per image
    counts = collections.Counter(n for p in picks for n in p)
    assert abs(counts["a"] - 600 * 3 / 6) <= 100 and counts["c"] > counts["b"]  # as balanced as k=2 allows
    # OCR is only dealt to images whose caption shows text
    dealer = Dealer(DEFAULT_CATEGORIES, seed=3)
    no_text = {c.name for _ in range(50) for c in dealer.deal("青い空と海。", 3)}
    with_text = {c.name for _ in range(50) for c in dealer.deal("看板に「営業中」と書かれている。", 3)}
    assert "ocr" not in no_text and "ocr" in with_text
    assert Dealer(DEFAULT_CATEGORIES, seed=3).deal("青い空", 2) == Dealer(DEFAULT_CATEGORIES, seed=3).deal("青い空", 2)


def test_cli_recaptions_a_caption_translate_dataset(tmp_path):
    write_folder(tmp_path / "imgs", 6)
    responder = image_responder()
    writer = RecaptionWriter()

    with LoopbackServer(responder) as vlm, LoopbackServer(writer) as llm:
        spec = JobSpec(generator="caption-translate", n=6, out=str(tmp_path / "captions"),
                       params={"source": str(tmp_path / "imgs")},
                       roles={"default": {"base_url": llm.base_url, "model": "M"},
                              "vlm": {"base_url": vlm.base_url, "model": "V"}})
        assert asyncio.run(run_job(spec)).stats.state == "succeeded"
        out = tmp_path / "qa"
        proc = _run("run", "category-recaption", "--n", "12", "--base-url", llm.base_url, "--model", "calm",
                    "--set", f"params.source={tmp_path / 'captions'}", "--set", "params.questions_per_image=2",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ds = datasets.load_from_disk(str(out))
    source = datasets.load_from_disk(str(tmp_path / "captions"))
    assert len(ds) == 12 and len(set(ds["key"])) == 12
    assert ds.features["image"] == datasets.Image()
    # the same picture, byte for byte: its content hash joins the two datasets
    assert set(ds["image_sha256"]) == set(source["image_sha256"])
    per_image = collections.defaultdict(list)
    for row in ds:
        per_image[row["image_sha256"]].append(row["category"])
        assert row["caption"] == CAPTIONS_JA["detailed"]
        user, answer = row["messages"]
        assert user["role"] == "user" and user["content"].startswith("<image>\n")
        assert answer["role"] == "assistant" and is_japanese(answer["content"])
        assert not mentions_caption(answer["content"])
        assert row["models"] == {"writer": "calm", "judge": "calm"}
    assert all(len(set(cats)) == 2 for cats in per_image.values())
    assert "ocr" not in ds["category"]  # the detailed captions show no text
    assert len(set(ds["category"])) >= 5
    kinds = {k: len(v) for k, v in writer.prompts.items()}
    assert kinds["question"] == kinds["answer"] == kinds["verify"] >= 12 and kinds["followup"] == 0
    man = orjson.loads((out / "manifest.json").read_bytes())
    assert set(man["prompt_templates"]) == {"question", "answer", "verify", "followup", "multi_question",
                                            "multi_answer"}


def test_caption_mentions_contradictions_and_misfits_are_dropped(tmp_path):
    captions = [CAPTIONS_JA["dense"]] * 4 + [""]
    _captioned_parquet(tmp_path / "c.parquet", captions)
    base = image_responder()

    def writer(body):
        prompt = last_user_text(body)
        if "質問を一つ作って" in prompt and "「比較」" in prompt:
            return "該当なし"
        if "利用者の質問" in prompt and QUESTIONS["counting"] in prompt:
            return "キャプションによると、図形は二つあります。"
        if "矛盾していないか" in prompt and QUESTIONS["ocr"] in prompt:
            return "矛盾"
        return base(body)

    cats = [c for c in DEFAULT_CATEGORIES if c.name in ("description", "counting", "ocr", "comparison")]
    with LoopbackServer(writer) as srv:
        spec = JobSpec(generator="category-recaption", n=5, max_inputs=17, out=str(tmp_path / "out"),
                       params={"source": str(tmp_path / "c.parquet"), "caption_column": "text",
                               "categories": [c.model_dump() for c in cats], "questions_per_image": 4},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "incomplete"
    assert result.manifest["failures_by_reason"] == {
        "category_not_applicable": 4, "answer_mentions_caption": 4, "answer_contradicts_caption": 4,
        "caption_missing": 1}
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds["category"] == ["description"] * 4
    assert {m[1]["content"] for m in ds["messages"]} == {ANSWERS["description"]}


def test_kill_midway_then_resume_gives_exactly_n(tmp_path):
    _captioned_parquet(tmp_path / "c.parquet", [CAPTIONS_JA["dense"]] * 40)
    with LoopbackServer(RecaptionWriter(), latency=0.04) as srv:
        out = tmp_path / "run"
        common = ["run", "category-recaption", "--n", "36", "--base-url", srv.base_url, "--model", "M",
                  "--set", f"params.source={tmp_path / 'c.parquet'}", "--set", "params.caption_column=text",
                  "--set", "params.questions_per_image=1", "--out", str(out)]
        proc = subprocess.Popen([*CLI, *common, "--concurrency", "2", "--set", "flush_seconds=0.2",
                                 "--set", "shard_rows=3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marker = out / ".synthgen" / "progress.json"
        deadline = time.time() + 120
        while time.time() < deadline:
            if marker.exists() and orjson.loads(marker.read_bytes())["records"] >= 6:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        written = orjson.loads(marker.read_bytes())["records"]
        assert 6 <= written < 36
        again = _run(*common, "--concurrency", "16", "--resume")
    assert again.returncode == 0, again.stderr
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 36 and len(set(ds["key"])) == 36
    counts = collections.Counter(ds["category"])
    eligible = [c for c in DEFAULT_CATEGORIES if c.name != "recipe"]  # the caption shows no food
    total = sum(c.weight for c in eligible)
    assert all(abs(counts[c.name] - 36 * c.weight / total) <= 1 for c in eligible) and "recipe" not in counts


def test_bad_params_and_missing_columns_are_clear_errors(tmp_path):
    from pydantic import ValidationError

    from synthgen.generators.category_recaption import generator

    cat = {"name": "a", "label": "A", "instruction": "-"}
    for bad, message in (({"categories": [cat, cat]}, "unique"),
                         ({"categories": [{**cat, "requires": "(["}]}, "regex"),
                         ({"categories": [{**cat, "weight": 0}]}, "greater than 0"),
                         ({"questions_per_image": 0}, "questions_per_image")):
        with pytest.raises(ValidationError, match=message):
            generator.parse_params({"source": str(tmp_path), **bad})
    _captioned_parquet(tmp_path / "c.parquet", ["x"])
    spec = JobSpec(generator="category-recaption", n=1, out=str(tmp_path / "out"),
                   params={"source": str(tmp_path / "c.parquet")},  # default caption column is absent
                   roles={"default": {"base_url": "http://127.0.0.1:9/v1", "model": "M"}})
    with pytest.raises(ValueError, match="no column"):
        asyncio.run(run_job(spec))
