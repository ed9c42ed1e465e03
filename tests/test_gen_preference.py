"""preference-pairs: judged pairs from different temperatures, models or prompts; TRL's DPO layout; resume."""

from __future__ import annotations

import asyncio
import threading

import datasets
import pytest
from gen_cli import kill_then_resume
from gen_responders import RIGHT, TERSE, WRONG, preference_responder

from synthgen.engine.runner import run_job
from synthgen.generators.preference_pairs import generator, parse_verdict, to_dpo
from synthgen.loopback_server import LoopbackServer, last_user_text
from synthgen.spec import JobSpec


def _run(tmp_path, name: str, params: dict, roles: dict, n: int = 6, responder=preference_responder):
    with LoopbackServer(responder) as srv:
        spec = JobSpec(generator="preference-pairs", n=n, out=str(tmp_path / name), params=params,
                       roles={k: {"base_url": srv.base_url, **v} for k, v in roles.items()})
        result = asyncio.run(run_job(spec))
    return result, datasets.load_from_disk(str(tmp_path / name))


def test_pairs_by_temperature_through_the_cli_with_kill_and_resume(tmp_path):
    out = tmp_path / "run"
    with LoopbackServer(preference_responder, latency=0.02) as srv:
        args = ["run", "preference-pairs", "--n", "24", "--base-url", srv.base_url, "--model", "M", "--out", str(out)]
        written, again = kill_then_resume(args, out, kill_after=6)
    assert 6 <= written < 24
    assert again.returncode == 0, again.stderr + again.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 24 and len(set(ds["key"])) == 24
    for row in ds:
        assert row["chosen"] == [{"role": "assistant", "content": RIGHT}]
        assert row["rejected"] == [{"role": "assistant", "content": WRONG}]
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("ある店で")
        assert row["chosen_from"]["temperature"] == pytest.approx(0.3)
        assert row["rejected_from"]["temperature"] == pytest.approx(1.1)
        assert row["judge_reason"].startswith(("Aの方", "Bの方")) and row["contrast"] == "temperatures"
        assert row["persona"] and row["difficulty"] in {"basic", "intermediate", "advanced"}


def test_pairs_by_model_and_by_prompt_and_position_is_drawn(tmp_path):
    judged: list[str] = []
    lock = threading.Lock()

    def responder(body):
        if "より良い方を選んで" in last_user_text(body):
            with lock:
                judged.append(last_user_text(body).split("回答A：", 1)[1][:40])
        return preference_responder(body)

    _, by_model = _run(tmp_path, "models", {"contrast": "models"},
                       {"default": {"model": "good"}, "rival": {"model": "rival"}}, n=8, responder=responder)
    assert {r["chosen_from"]["model"] for r in by_model} == {"good"}
    assert {r["rejected_from"]["role"] for r in by_model} == {"rival"}
    assert {r["rejected"][0]["content"] for r in by_model} == {WRONG}
    # the judge saw the right answer first in some records and second in others
    assert any(s.strip().startswith(RIGHT[:10]) for s in judged) and any(
        s.strip().startswith(WRONG[:10]) for s in judged)
    _, by_prompt = _run(tmp_path, "prompts", {"contrast": "prompts", "tasks": [
        {"name": "knowledge", "label": "日常の知識", "instruction": "知識を問う質問にすること。"}]},
        {"default": {"model": "M"}}, n=4)
    assert {r["rejected"][0]["content"] for r in by_prompt} == {TERSE}
    assert {r["rejected_from"]["prompt"] for r in by_prompt} == {"answer_terse"}


def test_rows_load_in_trls_dpo_layout(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    _, ds = _run(tmp_path, "dpo", {}, {"default": {"model": "M"}}, n=3)
    dpo = to_dpo(ds)
    assert dpo.column_names == ["prompt", "chosen", "rejected"]
    row = dpo[0]
    assert is_conversational(row)
    vocab = {"[UNK]": 0, "<s>": 1}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", bos_token="<s>")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    text = maybe_apply_chat_template(row, tok)
    assert text["prompt"] == f"<user>{row['prompt'][0]['content']}</user><assistant>"
    assert text["chosen"] == f"{RIGHT}</assistant>" and text["rejected"] == f"{WRONG}</assistant>"
    flat = to_dpo(ds, conversational=False)
    assert not is_conversational(flat[0]) and flat[0]["chosen"] == RIGHT


def test_unclear_inconsistent_and_flawed_chosen_are_dropped(tmp_path):
    def fickle(body):  # always prefers whatever is shown first: position bias
        if "より良い方を選んで" in last_user_text(body):
            return "A\n理由：Aの方が丁寧だからです。"
        return preference_responder(body)

    result, ds = _run(tmp_path, "both", {"judge_both_orders": True}, {"default": {"model": "M"}}, n=1,
                      responder=fickle)
    assert result.stats.state == "incomplete" or len(ds) == 0
    assert set(result.manifest["failures_by_reason"]) == {"judge_inconsistent"}

    def lenient(body):  # the judge prefers the wrong answer, which has no final-answer line here
        if "より良い方を選んで" in last_user_text(body):
            a = last_user_text(body).split("回答A：", 1)[1].split("回答B：", 1)[0]
            return ("B" if "600円" in a else "A") + "\n理由：短いからです。"
        if float(body.get("temperature") or 0) > 1:
            return "りんごの代金を順に計算すると、全部で500円になります。"
        return preference_responder(body)

    math = [{"name": "math", "label": "数学", "instruction": "計算問題にすること。", "final_answer": True}]
    result, _ = _run(tmp_path, "flawed", {"tasks": math}, {"default": {"model": "M"}}, n=1, responder=lenient)
    assert set(result.manifest["failures_by_reason"]) == {"chosen_no_final_answer"}
    assert parse_verdict("Ｂ\n理由：正確です。") == ("B", "正確です。")
    assert parse_verdict("どちらも良い") == (None, "")


def test_params_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="temperatures"):
        generator.parse_params({"temperatures": [0.7, 0.7]})
    with pytest.raises(ValidationError, match="contrast"):
        generator.parse_params({"contrast": "seeds"})


def test_multi_turn_pairs_answer_the_last_question_of_the_conversation(tmp_path):
    judged: list[str] = []
    lock = threading.Lock()

    def responder(body):
        if "より良い方を選んで" in last_user_text(body):
            with lock:
                judged.append(last_user_text(body))
        return preference_responder(body)

    _, ds = _run(tmp_path, "turns", {"turns": 3}, {"default": {"model": "M"}}, n=3, responder=responder)
    assert len(ds) == 3
    for row in ds:
        assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
        assert row["prompt"][1]["content"] == RIGHT and row["prompt"][2]["content"].startswith("りんごが6個")
        assert row["prompt"][4]["content"].startswith("りんごが7個")
        assert row["chosen"][0]["content"] == RIGHT and row["rejected"][0]["content"] == WRONG
    assert judged and all("これまでの会話" in j and "ユーザー：" in j for j in judged)
    assert to_dpo(ds)[0]["prompt"] == ds[0]["prompt"]
