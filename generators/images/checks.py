"""Text checks specific to image data: refusals, "according to the caption", translation length.

VLMs answer a picture they cannot read with apologies ("I cannot see the image",
「画像を確認できません」) that look like captions to a length check; a caption-grounded
answer that says 「キャプションによると」 teaches a model to cite text it will never see.
"""

from __future__ import annotations

import re

_REFUSAL = re.compile(
    r"\bI(?:'m| am)? (?:sorry|unable|not able)\b|\bI (?:can(?:no|')t|could ?n[o']t|do ?n[o']t) "
    r"(?:see|view|access|open|determine|identify|describe|help|assist|provide)\b"
    r"|\bas an AI\b|\bno image (?:was |is )?(?:provided|attached|shown|uploaded)\b"
    r"|\b(?:image|picture) (?:is )?(?:not (?:visible|available|provided|loaded)|could not be (?:loaded|displayed))\b"
    r"|申し訳(?:ありません|ございません)|画像(?:を|が)?(?:見る|表示する|確認する|読み込む)?こと(?:が|は)できません"
    r"|画像(?:が|は)(?:見え|表示され|添付され|提供され)(?:ません|ていません)|お手伝いできません|AIとして",
    re.I,
)
_MENTIONS_CAPTION = re.compile(
    r"キャプション|説明文(?:に|では|によると|によれば)|(?:与えられた|提供された|上記の)(?:説明|文章|テキスト|記述)"
    r"|記述(?:によると|によれば|では)|説明(?:によると|によれば)"
    r"|\bcaption\b|according to the (?:description|text)|\bthe description (?:says|states|mentions)\b",
    re.I,
)
_TRANSLATION_LABEL = re.compile(r"^\s*(?:\*\*)?\s*(?:日本語訳|翻訳|訳文|和訳|日本語|Japanese(?: translation)?)\s*(?:\*\*)?\s*[:：]\s*",
                                re.I)
_NOT_CHARS = re.compile(r"\s+")


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text))


def mentions_caption(text: str) -> bool:
    return bool(_MENTIONS_CAPTION.search(text))


def strip_translation_label(text: str) -> str:
    """Drop a leading 「翻訳：」/「日本語訳:」 and wrapping quotes that translators like to add."""
    text = _TRANSLATION_LABEL.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] in "「『\"" and text[-1] in "」』\"" and text.count(text[0]) == 1:
        text = text[1:-1].strip()
    return text


def visible_length(text: str) -> int:
    return len(_NOT_CHARS.sub("", text))


def length_ratio(source: str, target: str) -> float:
    """Target characters per source character, whitespace aside."""
    return visible_length(target) / max(1, visible_length(source))
