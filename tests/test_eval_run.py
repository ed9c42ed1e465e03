"""Whole evaluations on tiny task datasets the tests write in each task's Hub format (generated
pictures): against a loopback VLM endpoint and judge, and with a tiny model from the trainer run
in-process through `synthgen eval`; judgement cache hits on re-run; compare; the held-out split."""

from __future__ import annotations

import asyncio
import json

import datasets
import eval_data
import pytest
import torch
from typer.testing import CliRunner

from synthgen.evaluator import compare
from synthgen.evaluator.metrics import rouge_l
from synthgen.evaluator.runner import evaluate
from synthgen.evaluator.spec import EvalSpec
from synthgen.evaluator.tasks import get_task
from synthgen.evaluator.tasks.heldout import split, write_split
from synthgen.loopback_server import LoopbackServer
from synthgen.service.cli import app

torch.set_num_threads(1)


def colour_blind_vlm(body):
    """Right about red and blue, calls green red: a model with a known, partial skill."""
    return eval_data.vlm_responder(body).replace("緑", "赤")


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    srcs = eval_data.all_tasks(root)
    srcs["heron-raw"] = str(eval_data.heron_raw(root / "heron-raw"))
    rows = eval_data_rows(40)
    datasets.Dataset.from_dict(rows, features=datasets.Features({
        "image": datasets.Image(), "key": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]}),
    ).save_to_disk(str(root / "ours"))
    srcs["synthgen-heldout"] = str(root / "ours")
    return srcs


def eval_data_rows(n: int) -> dict[str, list]:
    rows: dict[str, list] = {"image": [], "key": [], "messages": []}
    for i in range(n):
        c = eval_data.colour_of(i)
        rows["image"].append({"bytes": eval_data.png(c), "path": None})
        rows["key"].append(f"record-{i}")
        rows["messages"].append([{"role": "user", "content": "<image>\n丸は何色ですか？"},
                                 {"role": "assistant", "content": f"{c}色の丸です。"}])
    return rows


def spec_for(vlm: LoopbackServer, judge: LoopbackServer, srcs: dict[str, str], names: list[str], **extra) -> EvalSpec:
    return EvalSpec.model_validate({
        "model": {"base_url": vlm.base_url, "model": "loop-vlm"}, "judge": {"base_url": judge.base_url, "model": "loop-judge"},
        "tasks": [{"name": n, "source": srcs[n]} for n in names], **extra})


def test_task_loaders_read_the_hub_layouts(task_data):
    vg = list(get_task("ja-vg-vqa-500").load(task_data["ja-vg-vqa-500"]))
    assert [s.id for s in vg] == ["1000", "1001", "1010", "1011", "1020", "1021"]  # flattened per qa_id
    assert vg[2].reference == "青" and vg[2].meta["image_id"] == "101"
    heron = list(get_task("japanese-heron-bench").load(task_data["japanese-heron-bench"]))
    raw = list(get_task("japanese-heron-bench").load(task_data["heron-raw"]))
    assert [(s.meta["category"], s.reference) for s in heron[:3]] == [("conv", "赤色の丸です。"), ("detail", "青色の丸です。"),
                                                                     ("complex", "緑色の丸です。")]
    assert [(s.id, s.question, s.reference, s.meta["context"]) for s in raw] == [
        (s.id, s.question, s.reference, s.meta["context"]) for s in heron[:3]]
    doc = list(get_task("jdocqa").load(task_data["jdocqa"]))
    assert [len(s.images) for s in doc] == [2, 1, 1, 1] and [s.meta["answer_type"] for s in doc[:2]] == ["factoid", "open-ended"]
    wild = list(get_task("ja-vlm-bench-in-the-wild").load(task_data["ja-vlm-bench-in-the-wild"]))
    assert [s.id for s in wild] == ["0", "1", "2", "3"]


def test_whole_evaluation_against_loopback_endpoints_and_cache_on_rerun(task_data, tmp_path):
    names = ["japanese-heron-bench", "ja-vg-vqa-500", "ja-vlm-bench-in-the-wild", "jdocqa", "synthgen-heldout"]
    with LoopbackServer(colour_blind_vlm) as vlm, LoopbackServer(eval_data.judge_responder) as judge:
        judge.keep_bodies = True
        spec = spec_for(vlm, judge, task_data, names, label="colour-blind")
        report = asyncio.run(evaluate(spec, tmp_path / "runs" / "a"))
        first_judge_calls = judge.requests
        again = asyncio.run(evaluate(spec, tmp_path / "runs" / "b"))
        assert judge.requests == first_judge_calls  # every judgement came from the cache
    assert judge.bodies[0]["response_format"]["type"] == "json_schema"
    t = report["tasks"]
    # Heron: complex questions are the green pictures (wrong): 2/8 -> 25; conv and detail 8/8 -> 100
    heron = t["japanese-heron-bench"]["metrics"]
    assert {c: v["score"] for c, v in heron["categories"].items()} == {"conv": 100.0, "detail": 100.0, "complex": 25.0}
    assert heron["heron"] == pytest.approx(75.0) and heron["unparseable"] == 0 and heron["judged"] == 6
    # VG-VQA: 4 of 6 answers name the right colour (judge 5), 2 do not (judge 1)
    vg = t["ja-vg-vqa-500"]
    assert vg["metrics"]["judge"] == pytest.approx((4 * 5 + 2 * 1) / 6)
    assert vg["metrics"]["rouge_l"] == pytest.approx(sum(rouge_l([s["reference"] for s in vg["samples"]],
                                                                 [s["answer"] for s in vg["samples"]])) / 6)
    # JDocQA exact match on closed types only: the red one is right, the green one is not
    assert t["jdocqa"]["metrics"]["exact"] == 50.0 and t["jdocqa"]["metrics"]["exact_n"] == 2
    held = t["synthgen-heldout"]
    assert held["n"] == len(split(task_data["synthgen-heldout"])["test"]) > 0
    assert all(s["question"] == "\n丸は何色ですか？" for s in held["samples"])  # <image> placeholder removed
    assert report["generation"]["max_tokens"] == 256 and report["usage"]["model"]["requests"] == sum(
        x["n"] for x in t.values())
    assert again["judge_stats"]["cache_hits"] == sum(x["metrics"].get("judged", 0) for x in t.values())
    assert {name: x["metrics"] for name, x in again["tasks"].items()} == {name: x["metrics"] for name, x in t.items()}
    out = tmp_path / "runs" / "a"
    assert json.loads((out / "report.json").read_text())["tasks"]["jdocqa"]["samples"][0]["answer"] == "赤色の丸です。"
    md = (out / "report.md").read_text()
    assert "| Japanese Heron-Bench | 6 |" in md and "cyberagent/llava-calm2-siglip | 54.10" in md and "9f450a5" in md
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_heldout_split_is_stable_and_disjoint(task_data, tmp_path):
    sizes = write_split(task_data["synthgen-heldout"], tmp_path / "split", fraction=0.25)
    parts = datasets.load_from_disk(str(tmp_path / "split"))
    train, test = set(parts["train"]["key"]), set(parts["test"]["key"])
    assert sizes == {"train": len(train), "test": len(test)} and not train & test and len(train | test) == 40
    assert 0 < len(test) < 40
    assert set(split(task_data["synthgen-heldout"], 0.25)["test"]["key"]) == test  # same split every time
    loaded = [s.id for s in get_task("synthgen-heldout").load(str(tmp_path / "split"))]
    assert sorted(loaded) == sorted(test)


def test_compare_paired_bootstrap():
    def report(label, rouge):
        samples = [{"id": str(i), "rouge_l": v} for i, v in enumerate(rouge)]
        return {"label": label, "tasks": {"t": {"title": "T", "metrics": {"rouge_l": sum(rouge) / len(rouge)},
                                               "samples": samples}}}

    a = report("a", [0.0] * 30)
    better = compare.compare(a, report("b", [100.0] * 30), n_boot=200)["tasks"]["t"]["comparisons"][0]
    assert better["diff"] == 100.0 and better["ci95"] == [100.0, 100.0] and better["significant"]
    mixed = compare.compare(report("a", [0.0, 100.0] * 15), report("b", [100.0, 0.0] * 15), n_boot=500)
    c = mixed["tasks"]["t"]["comparisons"][0]
    assert c["diff"] == 0.0 and c["ci95"][0] < 0 < c["ci95"][1] and not c["significant"]
    assert "| T | rouge_l | 0.00 | 100.00 | +100.00 ✱ | [+100.00, +100.00] | 30 |" in compare.markdown(
        compare.compare(a, report("b", [100.0] * 30), n_boot=50))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random LLaVA from the trainer's own parts (as tests/test_trainer_*.py make it)."""
    from synthgen.trainer import smoke
    from synthgen.trainer.assemble import assemble
    from synthgen.trainer.config import ModelConfig

    d = tmp_path_factory.mktemp("tiny-llava")
    smoke.save_vision(d / "v")
    smoke.save_lm(d / "lm", smoke.shapes_corpus())
    a = assemble(ModelConfig(vision=str(d / "v"), lm=str(d / "lm")))
    a.model.save_pretrained(d / "model")
    a.processor.save_pretrained(d / "model")
    return d / "model"


def test_cli_scores_a_trainer_checkpoint_in_process_and_compares(task_data, tiny_model, tmp_path):
    runner = CliRunner()
    with LoopbackServer(eval_data.judge_responder) as judge, LoopbackServer(colour_blind_vlm) as vlm:
        args = ["eval", "--tasks", "ja-vg-vqa-500,jdocqa", "--source", f"ja-vg-vqa-500={task_data['ja-vg-vqa-500']}",
                "--source", f"jdocqa={task_data['jdocqa']}", "--judge-base-url", judge.base_url, "--judge-model", "j"]
        res = runner.invoke(app, [*args, "--model", str(tiny_model), "--max-tokens", "6", "--device", "cpu",
                                  "--label", "tiny", "--out", str(tmp_path / "tiny")])
        assert res.exit_code == 0, res.output
        res_b = runner.invoke(app, [*args, "--model", "loop-vlm", "--base-url", vlm.base_url, "--out", str(tmp_path / "ep")])
        assert res_b.exit_code == 0, res_b.output
    report = json.loads((tmp_path / "tiny" / "report.json").read_text())
    assert report["model"]["engine"] == "transformers" and report["generation"]["max_tokens"] == 6
    samples = [s for t in report["tasks"].values() for s in t["samples"]]
    assert len(samples) == 10 and not any(s.get("error") for s in samples)
    assert all(isinstance(s["answer"], str) and 0 < s["completion_tokens"] <= 6 for s in samples)
    assert report["usage"]["model"]["requests"] == 10 and report["label"] == "tiny"
    assert "JA-VG-VQA-500" in res.output and (tmp_path / "tiny" / "chart.png").exists()
    res = runner.invoke(app, ["eval", "compare", str(tmp_path / "tiny"), str(tmp_path / "ep"), "--n-boot", "100",
                              "--chart", str(tmp_path / "cmp.png")])
    assert res.exit_code == 0, res.output
    assert "| JA-VG-VQA-500 | judge |" in res.output and (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_bad_input(tmp_path):
    res = CliRunner().invoke(app, ["eval", "--model", "m", "--tasks", "no-such-task", "--base-url", "http://127.0.0.1:9/v1",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown task" in res.output
    res = CliRunner().invoke(app, ["eval", "--model", "m", "--source", "jdocqa", "--base-url", "http://127.0.0.1:9/v1"])
    assert res.exit_code == 2 and "TASK=PATH" in res.output


def test_failed_answers_and_unparseable_judgements_are_reported_not_hidden(task_data, tmp_path):
    from synthgen.loopback_server import Reply

    def flaky_vlm(body):
        text = json.dumps(body, ensure_ascii=False)
        return Reply(status=400, raw=b'{"error": "bad image"}') if "（1）" in text else eval_data.vlm_responder(body)

    def sloppy_judge(body):
        return "どちらも良い回答です。" if "# 回答A" in json.dumps(body, ensure_ascii=False) else '{"score": 4}'

    with LoopbackServer(flaky_vlm) as vlm, LoopbackServer(sloppy_judge) as judge:
        spec = spec_for(vlm, judge, task_data, ["japanese-heron-bench", "ja-vg-vqa-500"], judge_retries=1)
        report = asyncio.run(evaluate(spec, tmp_path / "out"))
    heron, vg = report["tasks"]["japanese-heron-bench"], report["tasks"]["ja-vg-vqa-500"]
    # question "（1）" is refused by the endpoint: one Heron question, three VG questions (one per image)
    assert heron["answers_failed"] == 1 and vg["answers_failed"] == 3
    assert [s.get("error") for s in vg["samples"]].count("http_400") == 3
    assert heron["metrics"]["unparseable"] == 5 and heron["metrics"]["unjudged"] == 1 and heron["metrics"]["heron"] is None
    assert vg["metrics"]["judged"] == 3 and vg["metrics"]["judge"] == 4.0 and vg["metrics"]["unjudged"] == 3
    assert report["judge_stats"]["unparseable"] == 5 and report["judge_stats"]["retried_unparseable"] == 5
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Japanese Heron-Bench | 6 | – | – | – | – | 1 | 5 |" in md
