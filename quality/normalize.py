"""Text normalisation for comparison: the same sentence typed with full- or half-width
characters, different spacing or extra punctuation must compare equal or near-equal."""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
_IMAGE_TOKEN = re.compile(r"<image>\s*")
# Punctuation and symbols (Unicode P* and S*) after NFKC, plus whitespace; dropped before
# shingling so an inserted 「、」 or 「！」 changes no character n-gram.
_PUNCT_TABLE: dict[int, None] = {}


def _punct_table() -> dict[int, None]:
    if not _PUNCT_TABLE:
        for cp in range(0x110000):
            cat = unicodedata.category(chr(cp))
            if cat[0] in "PSZ" or chr(cp).isspace():
                _PUNCT_TABLE[cp] = None
    return _PUNCT_TABLE


def normalize(text: str) -> str:
    """NFKC (folds full/half width: ＡＢＣ１２３ -> ABC123, ｶﾀｶﾅ -> カタカナ), lower case,
    whitespace runs collapsed to one space and trimmed."""
    text = unicodedata.normalize("NFKC", text)
    return _SPACE.sub(" ", text).strip().lower()


def exact_key_text(text: str) -> str:
    """The text exact dedup hashes: normalised and with every space removed (spaces carry no
    meaning in Japanese, and generated text varies them freely)."""
    return _SPACE.sub("", normalize(_IMAGE_TOKEN.sub("", text)))


def shingle_text(text: str) -> str:
    """The text near-dup dedup shingles: normalised, punctuation, symbols and spaces removed."""
    return normalize(_IMAGE_TOKEN.sub("", text)).translate(_punct_table())


def char_ngrams(text: str, n: int) -> list[str]:
    """Character n-grams (a set's worth; duplicates are harmless to MinHash). Text shorter
    than n is one gram, so short records still hash and compare."""
    if len(text) <= n:
        return [text] if text else []
    return [text[i:i + n] for i in range(len(text) - n + 1)]
