"""Rouge-L for Japanese, computed the way llm-jp-eval-mm computes it, so our numbers sit beside theirs.

Their scorer (src/eval_mm/metrics/rougel_scorer.py, after SakanaAI's evomerge metrics) does, per
(reference, prediction) pair: drop emoji (the `emoji` package's list, then a few Unicode ranges),
normalise with neologdn (NFKC when neologdn is missing), collapse whitespace, segment with MeCab
(`fugashi.Tagger("-Owakati")`, which finds unidic-lite), and take rouge-score's ROUGE-L F-measure
of the two token lists, times 100. Scoring one pair at a time through their bootstrap aggregator
gives that pair's F-measure itself, so a task's Rouge-L is the plain mean of per-sample scores.

Our code is our own; only the recipe is shared. Tests check the scores against rouge-score's own
RougeScorer and an independent LCS over the same tokens, and against hand-computed Japanese pairs.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from collections.abc import Sequence

# The ranges their scorer strips after the emoji package's own test (emoticons, pictographs,
# transport, flags, dingbats): kept identical so edge cases score the same.
_EMOJI_RANGES = re.compile("[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff"
                           "\U0001f1e0-\U0001f1ff\U00002702-\U000027b0]+")
_local = threading.local()


@functools.cache
def _emoji_table() -> dict[int, None]:
    """str.translate table dropping every code point the emoji package calls an emoji on its
    own (what a per-character `emoji.is_emoji` test drops), at C speed."""
    import emoji

    return {ord(key): None for key in emoji.EMOJI_DATA if len(key) == 1}


def remove_emoji(text: str) -> str:
    return _EMOJI_RANGES.sub("", text.translate(_emoji_table()))


def warm_up() -> None:
    """Load the dictionaries (emoji table, MeCab) once, before timing-sensitive work starts."""
    tokenize("準備😀")


def normalize(text: str) -> str:
    """Emoji removed, neologdn-normalised (NFKC if neologdn is not installed), whitespace collapsed."""
    text = remove_emoji(text)
    try:
        import neologdn
    except ImportError:  # pragma: no cover - neologdn is a dependency; this mirrors their fallback
        text = unicodedata.normalize("NFKC", text)
    else:
        text = neologdn.normalize(text)
    return " ".join(text.split())


def _tagger():
    """One MeCab tagger per thread (a tagger is not safe to share across threads)."""
    tagger = getattr(_local, "tagger", None)
    if tagger is None:
        import fugashi

        tagger = _local.tagger = fugashi.Tagger("-Owakati")
    return tagger


def tokenize(text: str) -> list[str]:
    """MeCab words (unidic-lite) of the normalised text."""
    return _tagger().parse(normalize(text)).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence of two token lists, bit-parallel (Hyyrö 2004): one big-int
    step per token of `b` instead of a |a| x |b| table; the tests compare it with the table."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_tokens(ref: Sequence[str], pred: Sequence[str]) -> float:
    """rouge-score's ROUGE-L F-measure of two token lists, times 100: P = LCS/|pred|,
    R = LCS/|ref|, F = 2PR/(P+R); 0 when either side is empty or nothing is shared."""
    if not ref or not pred:
        return 0.0
    lcs = lcs_length(ref, pred)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


def rouge_l(refs: list[str], preds: list[str]) -> list[float]:
    """One 0-100 Rouge-L F-measure per (reference, prediction) pair, as llm-jp-eval-mm scores it.

    The LCS is ours (importing rouge-score pulls in nltk and scipy, seconds of start-up on a
    small machine); tests check it equals rouge-score's RougeScorer over the same tokens."""
    if len(refs) != len(preds):
        raise ValueError(f"{len(refs)} references but {len(preds)} predictions")
    return [rouge_l_tokens(tokenize(ref), tokenize(pred)) for ref, pred in zip(refs, preds, strict=True)]


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
