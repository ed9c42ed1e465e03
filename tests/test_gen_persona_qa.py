"""persona-qa's breadth: defined difficulty levels, personas used by a few traits, the final-answer line and
style rule, length caps, the keypoint-driven variant (CLI, kill and resume), and the 1,000-occupation persona set."""

from __future__ import annotations

import asyncio
import collections
import re
import threading

import datasets
from gen_cli import kill_then_resume
from gen_responders import PQA_QUESTION, persona_qa_responder

from synthgen.engine.runner import run_job
from synthgen.generators.persona_qa import final_answer, generator
from synthgen.generators.persona_traits import TRAITS, asker
from synthgen.loopback_server import LoopbackServer, last_user_text
from synthgen.personas import build, load_personas
from synthgen.spec import JobSpec


def test_persona_set_has_over_a_thousand_distinct_occupations():
    occupations = build.load_occupations()
    names = [o["occupation"] for o in occupations]
    assert len(set(names)) == len(names) >= 1000
    personas = load_personas()
    assert len({p.meta["occupation"] for p in personas}) == len(names)
    assert all(p.meta["description"] and p.meta["description"] in p.text for p in personas)


def test_traits_are_a_subset_and_read_naturally():
    import random

    rng = random.Random(3)
    personas = load_personas(limit=300)
    shown = [asker(p, rng) for p in personas]
    assert all(1 <= len(a.traits) <= 3 and set(a.traits) < set(TRAITS) for a in shown)
    assert sum("occupation" in a.traits for a in shown) > 200  # the occupation most of the time
    assert len({a.traits for a in shown}) >= 8
    for a, p in zip(shown, personas, strict=True):
        assert a.shown.endswith("。") and a.shown != p.text
        if "region" in a.traits:
            assert p.meta["region"] in a.shown
        else:
            assert p.meta["region"] not in a.shown


def test_levels_traits_final_answer_and_style_through_the_run(tmp_path):
    prompts: list[str] = []
    lock = threading.Lock()

    def responder(body):
        with lock:
            prompts.append(last_user_text(body) if body["messages"][0]["role"] != "system"
                           else body["messages"][0]["content"])
        return persona_qa_responder(body)

    with LoopbackServer(responder) as srv:
        spec = JobSpec(generator="persona-qa", n=24, out=str(tmp_path / "out"), params={"turns": 2},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "succeeded"
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(ds) == 24 and set(ds["difficulty"]) == {"basic", "intermediate", "advanced"}
    asks = [p for p in prompts if "問題を一つ作って" in p]
    assert len(asks) == 24
    # the seeds' definition of the basic level reaches the writer
    assert sum("小学生でも正しく解ける" in p for p in asks) == ds["difficulty"].count("basic")
    for row in ds:
        assert row["persona"] and row["keypoint"] == "" and row["persona"] != _full(row["persona_id"])
        assert any(f"人物：{row['persona']}" in p for p in asks)
        for answer in [m["content"] for m in row["messages"] if m["role"] == "assistant"]:
            if row["task"] in ("math", "reasoning"):
                assert final_answer(answer, "答え：") == answer.rsplit("答え：", 1)[1]
    systems = [p for p in prompts if "です・ます調" in p]
    assert systems and all("答え：" in p for p in systems if "結論（数値なら単位も）" in p)


def _full(persona_id: str) -> str:
    return next(p.text for p in load_personas() if p.id == persona_id)


def test_answers_without_final_line_impolite_or_too_long_are_dropped(tmp_path):
    answers = iter(["計算すると600円になる。\n答え：600円",  # plain style, not です・ます
                    "120 × 5 = 600 です。代金は600円になります。",  # no final-answer line
                    "とても長い説明です。" * 300 + "\n答え：600円"])  # over the cap
    lock = threading.Lock()

    def responder(body):
        if body["messages"][0]["role"] == "system":
            with lock:
                return next(answers, None) or persona_qa_responder(body)
        return persona_qa_responder(body)

    math = [{"name": "math", "label": "数学", "instruction": "計算問題にすること。", "final_answer": True}]
    with LoopbackServer(responder) as srv:
        spec = JobSpec(generator="persona-qa", n=2, out=str(tmp_path / "out"), concurrency=1,
                       params={"turns": 1, "tasks": math, "max_answer_chars": 1000},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "succeeded"
    assert result.manifest["failures_by_reason"] == {"answer_not_polite": 1, "no_final_answer": 1,
                                                     "answer_too_long": 1}


def test_keypoint_variant_through_the_cli_with_kill_and_resume(tmp_path):
    seen: list[str] = []
    lock = threading.Lock()

    def responder(body):
        with lock:
            seen.append(last_user_text(body))
        return persona_qa_responder(body)

    out = tmp_path / "run"
    with LoopbackServer(responder, latency=0.02) as srv:
        args = ["run", "persona-qa", "--n", "30", "--base-url", srv.base_url, "--model", "M", "--out", str(out),
                "--set", "params.driver=keypoint", "--set", "params.turns=2"]
        written, again = kill_then_resume(args, out, kill_after=6)
    assert 6 <= written < 30
    assert again.returncode == 0, again.stderr + again.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 30 and len(set(ds["key"])) == 30
    keypoints = generator.parse_params({}).keypoints
    for row in ds:
        assert row["persona"] == row["persona_id"] == "" and row["keypoint"] in keypoints[row["task"]]
        assert row["messages"][0]["content"] == PQA_QUESTION.removeprefix("問題：")
    asks = [p for p in seen if "問題を一つ作って" in p]
    assert asks and all("人物:" not in p and re.search(r"「[^」]+」を主題にした", p) for p in asks)
    assert len(collections.Counter(ds["keypoint"])) >= 10


def test_difficulties_accept_the_old_plain_labels():
    params = generator.parse_params({"difficulties": ["易しい", "難しい"]})
    assert [(d.name, d.label) for d in params.difficulties] == [("level-1", "易しい"), ("level-2", "難しい")]
    assert [d.name for d in generator.parse_params({}).difficulties] == ["basic", "intermediate", "advanced"]
