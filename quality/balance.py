"""Topic balance: cap how many records any one noun (and any one category) may appear in.

Synthetic data drifts to a few favourite topics; counting nouns shows it and a cap evens it
out. Japanese has no spaces, so nouns come from MeCab (fugashi) with UniDic-lite. The cap is
enforced greedily in stream order: a record is kept only if none of its nouns has reached the
cap yet, so after the step no noun appears in more than `cap` kept records, exactly.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from typing import Any

from synthgen.quality.config import BalanceParams

# Nouns that say nothing about a topic: formal nouns, the vocabulary of any question, units.
STOP_NOUNS = frozenset(
    ["こと", "もの", "ため", "よう", "ところ", "とき", "時", "場合", "方", "中", "後", "前", "上", "下", "次", "数", "値", "問題", "答え", "質問", "回答", "解答", "合計", "結果", "全部", "全体", "以下", "以上", "今", "今回", "一つ", "二つ", "何", "なに", "誰", "どれ", "自分", "それぞれ", "他", "ほか", "例", "内容", "説明", "計算", "画像", "写真", "文章", "点", "際"])
_NOUN_POS2 = {"普通名詞", "固有名詞"}
_NOT_TOPIC_POS3 = {"副詞可能", "助数詞可能"}  # うち, 今日 / 円, 箱: counters and adverbial nouns


class NounCounter:
    """Nouns of a text, as the set that counts towards the cap (numbers, stop nouns and
    single kana left out)."""

    def __init__(self, ignore: list[str] | None = None) -> None:
        import fugashi

        self._tagger = fugashi.Tagger()
        self._ignore = STOP_NOUNS | {unicodedata.normalize("NFKC", w) for w in ignore or []}

    def nouns(self, text: str) -> set[str]:
        found = set()
        for word in self._tagger(unicodedata.normalize("NFKC", text)):
            feature = word.feature
            if feature.pos1 != "名詞" or feature.pos2 not in _NOUN_POS2 or feature.pos3 in _NOT_TOPIC_POS3:
                continue
            surface = word.surface
            if surface in self._ignore or (len(surface) == 1 and not _is_kanji(surface)):
                continue
            found.add(surface)
        return found


def _is_kanji(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


class Balancer:
    def __init__(self, params: BalanceParams, *, input_rows: int | None,
                 category_counts: dict[str, int] | None = None) -> None:
        self.params = params
        self.counter = NounCounter(params.ignore_nouns)
        if params.noun_cap is not None:
            self.noun_cap = params.noun_cap
        else:
            self.noun_cap = max(params.min_noun_cap, math.ceil(params.max_noun_share * (input_rows or 0)))
        self.noun_counts: Counter[str] = Counter()  # nouns of kept records
        self.seen_counts: Counter[str] = Counter()  # nouns of every record that reached the step
        self.category_counts: Counter[str] = Counter()
        self.category_cap: int | None = params.category_cap
        if self.category_cap is None and category_counts:
            self.category_cap = math.ceil(params.category_ratio * min(category_counts.values()))

    def text_for(self, question: str, answer: str) -> str:
        return {"question": question, "answer": answer}.get(self.params.fields, question + "\n" + answer)

    def check(self, question: str, answer: str, category: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """(reason, detail) when the record would push a noun or its category past the cap;
        None after counting it as kept."""
        nouns = self.counter.nouns(self.text_for(question, answer))
        self.seen_counts.update(nouns)
        cap = self.category_cap
        if category is not None and cap is not None and self.category_counts[category] >= cap:
            return "balance_category_cap", {"category": category, "cap": self.category_cap}
        over = sorted(n for n in nouns if self.noun_counts[n] >= self.noun_cap)
        if over:
            return "balance_noun_cap", {"noun": over[0], "cap": self.noun_cap}
        self.noun_counts.update(nouns)
        if category is not None:
            self.category_counts[category] += 1
        return None

    def summary(self, k: int = 30) -> dict[str, Any]:
        return {"noun_cap": self.noun_cap, "category_cap": self.category_cap,
                "top_nouns_before": self.seen_counts.most_common(k),
                "top_nouns_after": self.noun_counts.most_common(k),
                "categories_after": dict(self.category_counts)}
