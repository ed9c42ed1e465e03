"""Rouge-L as llm-jp-eval-mm computes it: hand-computed Japanese pairs, and an independent LCS."""

from __future__ import annotations

import pytest

from synthgen.evaluator.metrics import normalize, rouge_l, tokenize


def lcs_f(ref: list[str], pred: list[str]) -> float:
    """Textbook LCS dynamic programme and F-measure, written apart from rouge-score's."""
    if not ref or not pred:
        return 0.0
    table = [[0] * (len(pred) + 1) for _ in range(len(ref) + 1)]
    for i, r in enumerate(ref, 1):
        for j, p in enumerate(pred, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if r == p else max(table[i - 1][j], table[i][j - 1])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 100 * 2 * precision * recall / (precision + recall)


def test_hand_computed_pairs():
    # MeCab (unidic-lite) words, checked first so the hand computation below rests on them
    assert tokenize("猫が好きです") == ["猫", "が", "好き", "です"]
    assert tokenize("東京タワーは赤い。") == ["東京", "タワー", "は", "赤い", "。"]
    assert tokenize("赤い東京タワー") == ["赤い", "東京", "タワー"]
    scores = rouge_l(["猫が好きです", "東京タワーは赤い。", "猫が好きです"], ["犬が好きです", "赤い東京タワー", "猫が好きです"])
    # 3 of 4 words shared in order: P = R = 3/4 -> F = 75
    # LCS 東京 タワー = 2: P = 2/3, R = 2/5 -> F = 2PR/(P+R) = (8/15)/(16/15) = 1/2 -> 50
    assert scores == [pytest.approx(75.0), pytest.approx(50.0), pytest.approx(100.0)]


def test_normalisation_emoji_width_and_space():
    assert normalize("ＡＢＣ１２３です") == "ABC123です"
    assert rouge_l(["ＡＢＣ１２３です"], ["ABC123です"]) == [100.0]
    assert rouge_l(["おいしい😀ラーメン✨"], ["おいしいラーメン"]) == [100.0]
    assert tokenize("ﾗｰﾒﾝ　を食べた") == tokenize("ラーメンを食べた") == ["ラーメン", "を", "食べ", "た"]


def test_empty_and_length_mismatch():
    assert rouge_l(["猫です", ""], ["", ""]) == [0.0, 0.0]
    assert all(isinstance(v, float) for v in rouge_l(["猫です"], [""]))
    with pytest.raises(ValueError):
        rouge_l(["a"], [])


def test_matches_independent_lcs_over_the_same_tokens():
    refs = ["灰色の背景に赤い丸が一つ描かれています。", "駅のホームで電車を待つ人々がいます。", "この料理は寿司で、マグロとサーモンが見えます。",
            "富士山が雪をかぶっている", "看板には「営業中」と書かれている", "二匹の猫がソファの上で寝ている"]
    preds = ["赤い丸が描かれています", "人々が電車を待っています。ホームは混雑しています。", "寿司です。マグロが見えます",
             "雪の富士山", "営業中と書かれた看板", "犬が一匹、床で寝ている"]
    got = rouge_l(refs, preds)
    want = [lcs_f(tokenize(r), tokenize(p)) for r, p in zip(refs, preds, strict=True)]
    assert got == pytest.approx(want, abs=1e-9)
    assert len({round(v, 6) for v in got}) > 3  # the pairs really differ, the comparison is not vacuous
    # and rouge-score's own RougeScorer (what llm-jp-eval-mm calls) over the same MeCab tokens
    from rouge_score import rouge_scorer

    class Mecab:
        def tokenize(self, text):
            return tokenize(text)

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Mecab())
    theirs = [100 * scorer.score(r, p)["rougeL"].fmeasure for r, p in zip([*refs, "猫", ""], [*preds, "", "猫"], strict=True)]
    assert rouge_l([*refs, "猫", ""], [*preds, "", "猫"]) == pytest.approx(theirs, abs=1e-9)


def test_bit_parallel_lcs_equals_the_table_on_random_token_lists():
    import random

    from synthgen.evaluator.metrics import lcs_length, rouge_l_tokens

    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("あいうえおか") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("あいうえおきく") for _ in range(rng.randint(0, 40))]
        assert rouge_l_tokens(a, b) == pytest.approx(lcs_f(a, b), abs=1e-9)
        assert lcs_length(a, b) == lcs_length(b, a)


def test_emoji_removal_equals_a_per_character_is_emoji_test():
    """llm-jp-eval-mm drops each character `emoji.is_emoji` accepts, then a few ranges; our
    translate table must drop exactly the same (ZWJ sequences, skin tones, flags, dingbats)."""
    import random
    import re

    import emoji

    from synthgen.evaluator.metrics import remove_emoji

    ranges = re.compile("[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff"
                        "\U0001f1e0-\U0001f1ff\U00002702-\U000027b0]+")
    pool = [*"あいう漢字ＡＢ abc123。、😀👍🏻✨❤️‍🔥🇯🇵©®™↔️☺︎", *map(chr, range(0x2600, 0x27C0)), *map(chr, range(0x1F300, 0x1F700))]
    rng = random.Random(3)
    for _ in range(1000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
        assert remove_emoji(text) == ranges.sub("", "".join(c for c in text if not emoji.is_emoji(c)))
