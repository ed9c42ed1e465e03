"""Text checks shared by generators: is it Japanese, is it clean, did it leak its answer."""

from __future__ import annotations

import re

_KANA = re.compile(r"[\u3041-\u309f\u30a0-\u30ff\uff66-\uff9f]")
_NOT_LETTER = re.compile(r"[\W\d_]+")
_NOT_JA = re.compile(r"[^\u3041-\u309f\u30a0-\u30ff\uff66-\uff9f\u4e00-\u9fff\u3400-\u4dbf々〆ヵヶ]+")
_CODE_BLOCK = re.compile(r"```.*?```", re.S)
_PREFIX = re.compile(
    r"^\s*(?:[#*>\-\s]*)(?:\*\*)?\s*(?:追加の質問|追質問|フォローアップ質問|質問|問題|問い|設問|課題|回答|答え|解答"
    r"|Q\d*|A\d*|Question|Answer)\s*\d*\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
    re.I,
)
_LEAK = re.compile(r"(?:答え|解答|正解)\s*(?:は|:|：)|(?:answer)\s*(?:is|:)", re.I)
_CLAUSE_END = re.compile(r"[。．！!？?\n]")
# What follows 「答えは」 in a question that asks rather than tells: an interrogative, a question
# mark or an instruction (「答えは何になりますか」「答えは整数で求めなさい」).
_ASKS = re.compile(r"何|なに|なん|いくつ|いくら|どれ|どの|どう|どこ|どちら|どんな|だれ|誰|いつ|[？?]|なさい|ください"
                   r"|\b(?:what|which|how|who|when|where)\b", re.I)


def japanese_ratio(text: str) -> float:
    """Share of Japanese characters among letters, code blocks aside (code is ASCII by nature)."""
    body = _CODE_BLOCK.sub("", text) if "```" in text else text
    letters = len(_NOT_LETTER.sub("", body))  # counting by deletion runs in C, no match lists
    if not letters:
        return 0.0
    return len(_NOT_JA.sub("", body)) / letters


def is_japanese(text: str, min_ratio: float = 0.3) -> bool:
    """Kana must appear (kanji alone would pass Chinese) and Japanese must dominate the prose."""
    return bool(_KANA.search(_CODE_BLOCK.sub("", text))) and japanese_ratio(text) >= min_ratio


def strip_label(text: str) -> str:
    """Remove a leading label such as 「問題:」「**質問**：」「Q2:」 and wrapping brackets or quotes."""
    text = text.strip()
    previous = None
    while previous != text:
        previous = text
        text = _PREFIX.sub("", text, count=1).strip()
        if len(text) >= 2 and text[0] in "「『\"" and text[-1] in "」』\"" and text.count(text[0]) == 1:
            text = text[1:-1].strip()
    return text


def leaks_answer(question: str) -> bool:
    """「答えは6です」 leaks; 「次の計算の答えは何になりますか。」 asks. A mention of the answer leaks
    only when the rest of its clause states something rather than asking or instructing."""
    for match in _LEAK.finditer(question):
        rest = question[match.end():]
        end = _CLAUSE_END.search(rest)
        clause = rest[:end.end()] if end else rest
        if clause.strip(" 　。．:：、\n") and not _ASKS.search(clause):
            return True
    return False
