"""Each filter on crafted Japanese, English, looping, markup and mojibake samples, including
the answer-leak check's old false positive 「次の計算の答えは何になりますか。」."""

from __future__ import annotations

import pytest

from synthgen.generators.textcheck import leaks_answer
from synthgen.quality.config import FilterParams
from synthgen.quality.filters import first_failure

Q = "ある店でりんごを3個買いました。1個120円です。次の計算の答えは何になりますか。"
A = "3個に120円をかけると360円になります。したがって代金は360円です。"
P = FilterParams()


def test_clean_japanese_passes_every_check():
    assert first_failure(Q, A, P) is None
    assert first_failure("コードで合計を求めるには？", "次のように書けます。\n```python\nprint(sum([1, 2]))\n```\n結果は3です。",
                         P) is None


@pytest.mark.parametrize("question", [
    "次の計算の答えは何になりますか。", "答えはいくつでしょうか。", "答えは整数で求めなさい。", "答えを求めなさい。",
    "答えは、どうなりますか？",
])
def test_questions_that_ask_for_the_answer_do_not_leak(question):
    assert not leaks_answer(question)
    assert first_failure(question + "りんごの値段を考えます。", A, P) is None
    assert not leaks_answer("What is the answer?")


@pytest.mark.parametrize("question", ["30÷5はいくつですか。答えは6です。", "正解：6分。何分かかりますか。",
                                      "りんごは何個？ The answer is 3."])
def test_questions_that_state_the_answer_leak(question):
    assert leaks_answer(question)
    assert first_failure(question, A, P) == "filter_answer_leak"


@pytest.mark.parametrize(("question", "answer", "reason"), [
    ("How many apples did she buy in total?", "She bought three apples for 360 yen.", "filter_not_japanese"),
    ("潜水员下潜到三十米深的海底需要多少分钟", "需要六分钟才能到达海底。", "filter_not_japanese"),  # kanji, no kana
    (Q, "申し訳ありませんが、その質問にはお答えできません。", "filter_refusal"),
    (Q, "私はAIなので、計算の結果を保証することはできません。", "filter_refusal"),
    (Q, "I'm sorry, but I cannot help with that.", "filter_refusal"),
    (Q, "答えは360円です。" + "そして360円です。" * 8, "filter_looping"),
    (Q, "です" * 20, "filter_looping"),
    (Q, "\n".join(["代金は360円になります"] * 5), "filter_looping"),
    (Q, A + "<|im_end|>", "filter_markup"),
    (Q, "```python\nprint(360)\n" + A, "filter_markup"),
    (Q, "<div class='x'>" + A + "</div>", "filter_markup"),
    ("「ある店でりんごを買いました。何個ですか。", A, "filter_markup"),
    (Q.encode().decode("latin-1"), A.encode().decode("latin-1"), "filter_mojibake"),  # UTF-8 read as Latin-1
    (Q.encode("shift_jis").decode("cp1252", "replace"), A, "filter_mojibake"),  # Shift_JIS read as cp1252
    (Q.encode("euc_jp").decode("latin-1"), A, "filter_mojibake"),  # EUC-JP read as Latin-1
    (Q, A[:10] + "\ufffd\ufffd" + A[10:], "filter_mojibake"),
    ("何？", "3", "filter_too_short"),
    (Q, "あ" * 30_000, "filter_looping"),
])
def test_each_filter_catches_its_sample(question, answer, reason):
    assert first_failure(question, answer, P) == reason


def test_length_bounds_and_disabled_checks():
    import random

    from synthgen.quality.planted import base_record

    rng = random.Random(0)
    long_answer = "".join(base_record(rng)["answer"] for _ in range(300))  # varied prose, ~25k chars
    assert first_failure(Q, long_answer, P) == "filter_too_long"
    assert first_failure(Q, long_answer, FilterParams(max_chars=100_000)) is None
    english = ("How many apples?", "Three apples.")
    assert first_failure(*english, FilterParams(checks=["length", "mojibake"])) is None
    assert first_failure(*english, FilterParams(min_japanese_ratio=0)) is None
