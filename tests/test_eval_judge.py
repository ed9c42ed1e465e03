"""The judge: parsing of malformed, fenced, partial and non-JSON replies; structured output with
fallback; re-asks, then unparseable counted apart (never averaged in); the judgement cache."""

from __future__ import annotations

import json

import pytest

from synthgen.engine.roles import build_roles, close_roles, resolve_roles
from synthgen.evaluator import scoring
from synthgen.evaluator.cache import JudgeCache
from synthgen.evaluator.judge import Judge, JudgeParseError, parse_judgement
from synthgen.loopback_server import LoopbackServer, Reply
from synthgen.spec import RoleConfig


@pytest.mark.parametrize(("reply", "scores", "reason"), [
    ('{"reason": "正確", "score_a": 8, "score_b": 6}', {"score_a": 8, "score_b": 6}, "正確"),
    ('採点します。\n```json\n{"score_a": 9, "score_b": "7", "reason": "ほぼ正しい"}\n```\n以上です。',
     {"score_a": 9, "score_b": 7}, "ほぼ正しい"),
    ("```\n{'score_a': 2, 'score_b': 10}\n```", {"score_a": 2, "score_b": 10}, ""),  # single quotes, bare fence
    ('結果：{score_a: 8, score_b: 5,}', {"score_a": 8, "score_b": 5}, ""),  # bare keys, trailing comma
    ('{"reason": "説明が長くて途中で切れた", "score_a": 7, "score_b": 3', {"score_a": 7, "score_b": 3},
     "説明が長くて途中で切れた"),  # truncated: no closing brace
    ('<think>まず考える {"score_a": 1}</think>{"score_a": 6, "score_b": 4, "reason": "x"}',
     {"score_a": 6, "score_b": 4}, "x"),
    ('{"score_a": 8.0, "score_b": 3.0, "reason": "r"}', {"score_a": 8, "score_b": 3}, "r"),
])
def test_heron_replies_that_parse(reply, scores, reason):
    assert parse_judgement(reply, "heron") == (scores, reason)


@pytest.mark.parametrize("reply", [
    "",
    "どちらの回答もよく書けていると思います。",  # prose, no scores
    '{"reason": "途中で切れ',  # truncated before any score
    '{"score_a": 8}',  # one of two scores
    '{"score_a": 11, "score_b": 5}',  # outside 1-10: rejected, not clamped
    '{"score_a": "高い", "score_b": "低い"}',
])
def test_heron_replies_that_do_not(reply):
    with pytest.raises(JudgeParseError):
        parse_judgement(reply, "heron")


@pytest.mark.parametrize(("reply", "score"), [
    ("4", 4), ("3点。", 3), ("スコア: 2", 2), ("評価は5", 5), ('{"score": 1, "reason": "誤り"}', 1),
    ('```json\n{"reason": "ok", "score": 4}\n```', 4),
])
def test_answer_replies(reply, score):
    assert parse_judgement(reply, "answer")[0] == {"score": score}


@pytest.mark.parametrize("reply", ["6", '{"score": 0}', "とても良い回答です", "1から5で言えば高い"])
def test_answer_replies_rejected(reply):
    with pytest.raises(JudgeParseError):
        parse_judgement(reply, "answer")


def _role(server: LoopbackServer):
    cfg = resolve_roles({"judge": RoleConfig(base_url=server.base_url, model="judge-m", max_attempts=2)}, ("judge",))
    return build_roles(cfg)


async def test_structured_output_falls_back_when_refused_and_reasks_unparseable(tmp_path):
    seen = []

    def responder(body):
        seen.append("response_format" in body)
        if "response_format" in body:
            return Reply(status=400, raw=b'{"error": "response_format not supported"}')
        if len(seen) == 2:
            return "よくわかりません"  # unparseable: asked again
        return json.dumps({"reason": "ok", "score": 4})

    with LoopbackServer(responder) as server:
        roles = _role(server)
        judge = Judge(roles["judge"], JudgeCache(tmp_path / "c.sqlite"), structured=True, retries=2)
        j = await judge.judge("answer", "t", "s1", "答え", question="q", reference="r")
        await close_roles(roles)
    assert seen == [True, False, False]
    assert j.scores == {"score": 4} and j.attempts == 2 and not j.structured
    assert judge.stats.structured_fallback and judge.stats.retried_unparseable == 1 and judge.stats.unparseable == 0


async def test_structured_request_carries_the_schema(tmp_path):
    bodies = []

    def responder(body):
        bodies.append(body)
        return json.dumps({"reason": "良い", "score_a": 9, "score_b": 7})

    with LoopbackServer(responder) as server:
        roles = _role(server)
        judge = Judge(roles["judge"], None, structured=True)
        j = await judge.judge("heron", "t", "s1", "答え", question="q", reference="r", context="c")
        await close_roles(roles)
    schema = bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["reason", "score_a", "score_b"]
    assert schema["properties"]["score_b"] == {"type": "integer", "minimum": 1, "maximum": 10}
    assert bodies[0]["temperature"] == 0.0
    assert j.scores == {"score_a": 9, "score_b": 7} and j.reason == "良い" and j.structured


async def test_unparseable_is_counted_apart_and_cached(tmp_path):
    def responder(body):
        if "二番" in json.dumps(body, ensure_ascii=False):
            return "採点できません"
        return json.dumps({"reason": "r", "score_a": 8, "score_b": 4})

    cache = JudgeCache(tmp_path / "c.sqlite")
    with LoopbackServer(responder) as server:
        roles = _role(server)
        judge = Judge(roles["judge"], cache, structured=False, retries=1)
        good = await judge.judge("heron", "heron", "1", "一番の答え", question="q", reference="r", context="c")
        bad = await judge.judge("heron", "heron", "2", "二番の答え", question="q", reference="r", context="c")
        assert server.requests == 1 + 2  # the bad one asked twice (retries=1)
        same = await judge.judge("heron", "heron", "1", "一番の答え", question="q", reference="r", context="c")
        again = await judge.judge("heron", "heron", "2", "二番の答え", question="q", reference="r", context="c")
        other = await judge.judge("heron", "heron", "1", "別の答え", question="q", reference="r", context="c")
        # the good repeat was a cache hit; the unparseable one is asked again (not cached); a different answer too
        assert server.requests == 3 + 2 + 1
        await close_roles(roles)
    assert bad.scores is None and bad.error == "unparseable" and bad.raw == "採点できません" and bad.attempts == 2
    assert same.cached and same.scores == good.scores and judge.stats.cache_hits == 1
    assert not again.cached and again.error == "unparseable" and judge.stats.unparseable == 2
    assert good.scores == other.scores == {"score_a": 8, "score_b": 4}
    rows = [{"category": "conv", "judgement": good.as_dict()}, {"category": "conv", "judgement": bad.as_dict()},
            {"category": "detail", "judgement": other.as_dict()}]
    m = scoring.heron(rows)
    # the unparseable one is left out of both conv means: 4/8 = 50 (llm-jp-eval-mm's -1s would give (4-1)/(8-1))
    assert m["categories"]["conv"] == {"score": 50.0, "model_mean": 4.0, "reference_mean": 8.0, "n": 1}
    assert m["heron"] == 50.0 and m["unparseable"] == 1 and m["judged"] == 2


async def test_cache_key_includes_judge_model(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    with LoopbackServer(lambda b: '{"score": 3, "reason": "x"}') as server:
        for model in ("judge-a", "judge-b", "judge-a"):
            roles = build_roles(resolve_roles({"judge": RoleConfig(base_url=server.base_url, model=model)}, ("judge",)))
            await Judge(roles["judge"], cache, structured=False).judge("answer", "t", "s", "a", question="q", reference="r")
            await close_roles(roles)
        assert server.requests == 2
