"""LLM-judge: parsing malformed replies, structured output against a loopback server, the
fallback when a server refuses response_format, and threshold / top-fraction keeping."""

from __future__ import annotations

import asyncio
import re

import datasets
import orjson
import pytest

from synthgen.engine.roles import build_roles, close_roles, resolve_roles
from synthgen.loopback_server import LoopbackServer, Reply, last_user_text
from synthgen.quality.curate import curate_async, top_fraction_cut
from synthgen.quality.judge import JudgeParseError, parse_judgement
from synthgen.spec import RoleConfig


@pytest.mark.parametrize(("reply", "score", "criteria"), [
    ('{"correctness": 4, "helpfulness": 5, "fluency": 3, "reason": "概ね正しい"}', 4.0, 3),
    ('```json\n{"correctness": 5, "helpfulness": 5, "fluency": 5, "reason": "完璧"}\n```', 5.0, 3),
    ("採点結果です。\n{'correctness': 2, 'helpfulness': 3, 'fluency': 4, 'reason': '計算に誤り'} 以上。", 3.0, 3),
    ('{"correctness": 4, "helpfulness": 4, "fluency": 4, "reason": "良い",}', 4.0, 3),  # trailing comma
    ('{"correctness": "４", "helpfulness": "5点", "fluency": 3}', 4.0, 3),  # full-width digit, 「点」
    ('{"正確さ": 2, "有用性": 2, "日本語の自然さ": 5, "理由": "誤答"}', 3.0, 3),  # Japanese keys
    ('{"correctness": {"score": 5}, "helpfulness": {"score": 3}, "fluency": {"score": 4}}', 4.0, 3),
    ("正確さ: 5\n有用性: 4\n日本語の自然さ: 3\n理由: 自然な文章", 4.0, 3),  # plain lines
    ("総合スコア: 8/10", 4.0, 0),  # a ten-point overall score, halved
    ('{"score": 2, "reason": "短すぎる"}', 2.0, 0),
    ('{"correctness": 9, "helpfulness": 4, "fluency": 4}', 4.0, 2),  # out-of-range criterion ignored
    ('{"reason": "括弧 } を含む理由", "correctness": 3, "helpfulness": 3, "fluency": 3}', 3.0, 3),
])
def test_parse_judgement_reads_malformed_replies(reply, score, criteria):
    j = parse_judgement(reply)
    assert j.score == score and len(j.criteria) == criteria


@pytest.mark.parametrize("reply", ["", "よく分かりません。", '{"correctness": "高い"}', "{broken json", "スコア: 0"])
def test_parse_judgement_refuses_replies_without_a_score(reply):
    with pytest.raises(JudgeParseError):
        parse_judgement(reply)


def _quality_of(body) -> int:
    m = re.search(r"品質(\d)", last_user_text(body))
    return int(m.group(1)) if m else 3


def _dataset(tmp_path, n=40):
    rows = [{"key": f"k{i:03d}", "id": i,
             "messages": [{"role": "user", "content": f"問題{i}：品質{1 + i % 5}のりんごを{i}個買うといくらですか。"},
                          {"role": "assistant", "content": f"{i}個に百円をかけて、{i * 100}円になります。"}]}
            for i in range(n)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "in"))
    return tmp_path / "in"


async def _curate(src, out, url, steps, **role):
    roles = build_roles(resolve_roles({"judge": RoleConfig(base_url=url, model="judge-m", max_attempts=2, **role)},
                                      ("judge",)))
    try:
        return await curate_async(src, out, steps, judge_role=roles["judge"], batch_size=16)
    finally:
        await close_roles(roles)


def test_judge_step_structured_output_threshold(tmp_path):
    src = _dataset(tmp_path)

    def judge(body):
        assert body["response_format"]["type"] == "json_schema"
        assert set(body["response_format"]["json_schema"]["schema"]["required"]) >= {"correctness", "reason"}
        q = _quality_of(body)
        if q == 2:
            return "採点不能です"  # unparseable -> dropped as judge_unparsed
        return orjson.dumps({"correctness": q, "helpfulness": q, "fluency": q, "reason": f"品質{q}"}).decode()

    with LoopbackServer(judge) as srv:
        m = asyncio.run(_curate(src, tmp_path / "out", srv.base_url,
                                [{"step": "judge", "params": {"min_score": 4}}]))
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert sorted(set(out["judge_score"])) == [4.0, 5.0] and len(out) == 16
    assert m["dropped"] == {"judge_low_score": 16, "judge_unparsed": 8}
    assert m["judge"]["structured_output"] is True and m["judge"]["usage"]["requests"] == 40
    assert set(out.column_names) == {"key", "id", "messages", "judge_score", "judge_reason"}
    drops = [orjson.loads(x) for x in (tmp_path / "out" / "drops.jsonl").read_bytes().splitlines()]
    assert {d["reason"] for d in drops} == {"judge_low_score", "judge_unparsed"} and len(drops) == 24

    # judged again with a stricter cut: new scores replace the old columns
    with LoopbackServer(judge) as srv:
        m2 = asyncio.run(_curate(tmp_path / "out", tmp_path / "out2", srv.base_url,
                                 [{"step": "judge", "params": {"min_score": 5}}]))
    again = datasets.load_from_disk(str(tmp_path / "out2"))
    assert again.column_names == out.column_names and set(again["judge_score"]) == {5.0}
    assert m2["dropped"] == {"judge_low_score": 8} and len(again) == 8


def test_judge_falls_back_when_response_format_is_refused_and_keeps_top_fraction(tmp_path):
    src = _dataset(tmp_path)
    seen = {"structured": 0, "plain": 0}

    def judge(body):
        if "response_format" in body:
            seen["structured"] += 1
            return Reply(status=400, raw=b'{"error": "response_format is not supported"}')
        seen["plain"] += 1
        q = _quality_of(body)
        return f"以下が採点です。\n```json\n{{'correctness': {q}, 'helpfulness': {q}, 'fluency': {q},}}\n```"

    with LoopbackServer(judge) as srv:
        m = asyncio.run(_curate(src, tmp_path / "out", srv.base_url,
                                [{"step": "judge", "params": {"top_fraction": 0.3, "min_score": None}}],
                                concurrency=1))
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(out) == 12  # ceil(0.3 * 40), exactly: 8 fives and the first 4 fours
    assert sorted(out["judge_score"]).count(5.0) == 8 and sorted(out["judge_score"]).count(4.0) == 4
    assert m["judge"]["cut"] == {"score": 4.0, "ties_kept": 4} and m["judge"]["structured_output"] is False
    assert seen["structured"] == 1 and seen["plain"] == 40  # asked structured once, then plainly
    assert m["dropped"] == {"judge_low_score": 28} and m["output_rows"] == 12
    assert not (tmp_path / "out" / ".staging").exists()


def test_top_fraction_cut_is_exact():
    assert top_fraction_cut({"5.00": 3, "4.00": 5, "3.00": 2}, 0.5) == (4.0, 2)
    assert top_fraction_cut({"5.00": 3}, 1.0) == (5.0, 3)
