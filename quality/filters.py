"""Rule filters for generated Japanese Q&A: what a person would throw away at a glance.

English-only filters pass mojibake and Chinese; word-count bounds mean nothing without spaces.
These work on characters: the Japanese share of letters, character lengths, refusal and apology
phrases in Japanese and English, answers leaked into questions, looping output (small models
repeat themselves), broken markup and mojibake. Each returns a reason slug or None, so every
drop is counted by why.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable

from synthgen.generators.textcheck import is_japanese, leaks_answer
from synthgen.quality.config import FilterParams

_REFUSAL = re.compile(
    r"申し訳(?:ありません|ございません|ないのですが|ないですが)|すみませんが|ごめんなさい|お答えできません|回答できません"
    r"|お答えすることはできません|お手伝いできません|提供できません|(?:AI|ＡＩ)(?:言語)?モデル(?:として|なので|のため)"
    r"|私は(?:AI|ＡＩ|人工知能)(?:です|なので|のため)|I(?:'m| am) sorry|I (?:cannot|can't|am unable to)|As an AI",
    re.I)
_FENCE = "```"
_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9]*)\b[^<>]*>")
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>|\[/?INST\]|<<SYS>>|</?s>|\{\{|\}\}|\{%|%\}")
_PAIRS = {"「": "」", "『": "』", "（": "）", "【": "】"}
_REPEAT_RUN = re.compile(r"(.{2,30}?)\1{4,}", re.S)  # a unit repeated 5+ times back to back
# UTF-8 read as Latin-1/cp1252 (「ã\x81\x82」「Ã©」), Shift_JIS/EUC-JP read as Latin-1 (「‚±‚ê」「¤³¤ì」).
_MOJIBAKE = re.compile(r"[ÃÂâã][\x80-\xbf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122]"
                       r"|[\x80-\x9f]|\ufffd|(?:[‚ƒ„][\xa0-\xff]){2,}|(?:¤[\xa1-\xfe]){2,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LATIN1_SUPP = re.compile(r"[\xa0-\xff]")


def check_mojibake(question: str, answer: str, _p: FilterParams) -> str | None:
    text = question + "\n" + answer
    if _MOJIBAKE.search(text) or _CONTROL.search(text):
        return "filter_mojibake"
    if len(_LATIN1_SUPP.findall(text)) >= max(4, len(text) // 20):  # accented soup, not prose
        return "filter_mojibake"
    return None


def check_markup(question: str, answer: str, _p: FilterParams) -> str | None:
    text = question + "\n" + answer
    if text.count(_FENCE) % 2:
        return "filter_markup"
    if _SPECIAL_TOKEN.search(text):
        return "filter_markup"
    tags = [m.group(1).lower() for m in _TAG.finditer(text) if m.group(1).lower() not in {"br", "image", "hr"}]
    if tags:  # HTML in a chat answer is leftover markup unless it is inside a code block
        outside = _TAG.findall(re.sub(r"```.*?```", "", text, flags=re.S))
        if [t for t in outside if t.lower() not in {"br", "image", "hr"}]:
            return "filter_markup"
    for opening, closing in _PAIRS.items():
        if text.count(opening) != text.count(closing):
            return "filter_markup"
    return None


def _has_frequent_bigram(text: str) -> bool:
    """A unit repeated 5 times repeats its first two characters 5 times: a cheap necessary
    condition that spares most texts the back-tracking run search."""
    return max(Counter(text[i:i + 2] for i in range(len(text) - 1)).values(), default=0) >= 5


def check_looping(question: str, answer: str, _p: FilterParams) -> str | None:
    for text in (question, answer):
        if len(text) < 20:
            continue
        if _has_frequent_bigram(text) and _REPEAT_RUN.search(text):
            return "filter_looping"
        lines = [ln.strip() for ln in re.split(r"[\n。]", text) if ln.strip()]
        if len(lines) >= 4:
            top = Counter(lines).most_common(1)[0][1]
            if top >= 3 and top / len(lines) >= 0.3:  # the same sentence over and over
                return "filter_looping"
        raw = text.encode()
        if len(raw) >= 300 and len(zlib.compress(raw, 6)) / len(raw) < 0.12:  # far more repetitive than prose
            return "filter_looping"
    return None


def check_length(question: str, answer: str, p: FilterParams) -> str | None:
    total = len(question) + len(answer)
    if total < p.min_chars or len(answer.strip()) < p.min_answer_chars:
        return "filter_too_short"
    if total > p.max_chars:
        return "filter_too_long"
    return None


def check_japanese(question: str, answer: str, p: FilterParams) -> str | None:
    if p.min_japanese_ratio <= 0:
        return None
    for text in (question, answer):
        if text.strip() and not is_japanese(text, p.min_japanese_ratio):
            return "filter_not_japanese"
    return None


def check_refusal(_question: str, answer: str, _p: FilterParams) -> str | None:
    return "filter_refusal" if _REFUSAL.search(answer) else None


def check_leak(question: str, _answer: str, _p: FilterParams) -> str | None:
    return "filter_answer_leak" if leaks_answer(question) else None


CHECKS: dict[str, Callable[[str, str, FilterParams], str | None]] = {
    "mojibake": check_mojibake, "markup": check_markup, "looping": check_looping, "length": check_length,
    "japanese": check_japanese, "refusal": check_refusal, "leak": check_leak,
}


def first_failure(question: str, answer: str, params: FilterParams) -> str | None:
    """The first failing check's reason, in the order listed (mojibake before Japanese, so
    garbled Japanese is called garbled rather than foreign)."""
    for name in params.checks:
        reason = CHECKS[name](question, answer, params)
        if reason:
            return reason
    return None
