"""What a record says: its question and answer text, whatever the dataset's columns.

synthgen's generators all write a chat `messages` column (user turns ask, assistant turns
answer); other datasets have question/answer, instruction/output or a single text column.
The steps judge and compare this text, so they work on any dataset without per-generator code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_IMAGE_TOKEN = re.compile(r"<image>\s*")
QUESTION_COLUMNS = ("question", "instruction", "prompt", "input", "query")
ANSWER_COLUMNS = ("answer", "output", "response", "completion", "caption", "text")
IMAGE_COLUMNS = ("image", "images")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@dataclass(frozen=True)
class TextView:
    """Which columns hold the question and the answer (chosen once per dataset schema)."""

    messages: str | None = None
    question: tuple[str, ...] = ()
    answer: tuple[str, ...] = ()
    image: str | None = None

    @classmethod
    def for_columns(cls, columns: list[str], question: list[str] | None = None,
                    answer: list[str] | None = None) -> TextView:
        image = next((c for c in IMAGE_COLUMNS if c in columns), None)
        if question or answer:
            missing = [c for c in [*(question or []), *(answer or [])] if c not in columns]
            if missing:
                raise ValueError(f"text columns not in the dataset: {missing} (it has {columns})")
            return cls(None, tuple(question or ()), tuple(answer or ()), image)
        if "messages" in columns:
            return cls("messages", (), (), image)
        q = tuple(c for c in QUESTION_COLUMNS if c in columns)[:1]
        a = tuple(c for c in ANSWER_COLUMNS if c in columns)[:1]
        if not q and not a:
            raise ValueError(f"no text column found (looked for messages, {QUESTION_COLUMNS}, {ANSWER_COLUMNS}); "
                             f"name them with question/answer fields")
        return cls(None, q, a, image)

    @property
    def columns(self) -> list[str]:
        return [self.messages] if self.messages else [*self.question, *self.answer]

    def qa(self, row: dict[str, Any]) -> tuple[str, str]:
        """(question, answer): user turns and assistant turns joined by newlines, <image> removed."""
        if self.messages:
            asks, says = [], []
            for m in row.get(self.messages) or []:
                text = _IMAGE_TOKEN.sub("", _content_text(m.get("content"))).strip()
                (says if m.get("role") == "assistant" else asks if m.get("role") == "user" else []).append(text)
            return "\n".join(asks), "\n".join(says)
        q = "\n".join(_content_text(row.get(c)) for c in self.question)
        a = "\n".join(_content_text(row.get(c)) for c in self.answer)
        return _IMAGE_TOKEN.sub("", q).strip(), a.strip()


def image_of(row: dict[str, Any], column: str | None) -> Any:
    """The record's (first) image as stored: bytes, a {bytes, path} struct or None."""
    if not column:
        return None
    value = row.get(column)
    if isinstance(value, list):
        value = value[0] if value else None
    return value
