"""Topic balance: no noun appears in more kept records than the cap (exactly the cap for the
over-represented ones), and categories are capped too."""

from __future__ import annotations

import random
from collections import Counter

import datasets
import orjson

from synthgen.quality.balance import Balancer, NounCounter
from synthgen.quality.config import BalanceParams
from synthgen.quality.curate import curate

ANIMALS = ["猫", "犬", "金魚", "ハムスター", "インコ", "亀", "うさぎ", "馬"]
PLACES = ["公園", "図書館", "駅", "海岸", "山小屋", "病院", "学校", "港"]


def _questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    # 猫 dominates: half of the records mention it
    return [f"{'猫' if i % 2 == 0 else rng.choice(ANIMALS[1:])}が{rng.choice(PLACES)}で遊んでいます。"
            f"{rng.choice(['天気', '季節', '時間', '気分'])}はどうですか。" for i in range(n)]


def test_nouns_are_topic_words():
    nouns = NounCounter().nouns("佐藤さんは駅前のパン屋でりんごを147個買いました。代金はいくらですか。")
    assert {"佐藤", "駅前", "パン", "りんご", "代金"} <= nouns
    assert not nouns & {"147", "個", "いくら", "こと"}


def test_noun_cap_is_enforced_exactly():
    questions = _questions(200)
    b = Balancer(BalanceParams(noun_cap=12, category_field=None), input_rows=len(questions))
    kept = [q for q in questions if b.check(q, "") is None]
    counter = NounCounter()
    per_noun = Counter(n for q in kept for n in counter.nouns(q))
    assert max(per_noun.values()) == 12 and per_noun["猫"] == 12
    # greedy in stream order: a record is dropped iff one of its nouns was already at the cap
    counts: Counter[str] = Counter()
    expected = []
    for q in questions:
        nouns = counter.nouns(q)
        if all(counts[n] < 12 for n in nouns):
            counts.update(nouns)
            expected.append(q)
    assert kept == expected
    assert b.summary()["top_nouns_after"][0][1] == 12


def test_default_cap_is_a_share_of_the_input():
    b = Balancer(BalanceParams(max_noun_share=0.1, min_noun_cap=5, category_field=None), input_rows=400)
    assert b.noun_cap == 40
    assert Balancer(BalanceParams(min_noun_cap=20), input_rows=10).noun_cap == 20


def test_category_cap_through_curate(tmp_path):
    rng = random.Random(1)
    cats = ["食べ物"] * 30 + ["乗り物"] * 10 + ["建物"] * 5
    rows = [{"key": f"k{i}", "category": c,
             "messages": [{"role": "user", "content": f"<image>\n写真{i}の{c}について説明してください。"},
                          {"role": "assistant", "content": f"{rng.choice(PLACES)}にある{c}の写真{i}です。"}]}
            for i, c in enumerate(cats)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "in"))
    m = curate(tmp_path / "in", tmp_path / "out", [{"step": "balance", "params": {"noun_cap": 1000}}])
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert Counter(out["category"]) == {"食べ物": 10, "乗り物": 10, "建物": 5}  # cap = 2 x the smallest (5)
    assert m["dropped"] == {"balance_category_cap": 20} and m["balance"]["category_cap"] == 10
    drops = [orjson.loads(x) for x in (tmp_path / "out" / "drops.jsonl").read_bytes().splitlines()]
    assert {d["detail"]["category"] for d in drops} == {"食べ物"}
