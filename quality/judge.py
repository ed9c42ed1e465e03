"""LLM-judge scoring (Ask-LLM style): a model rates each record on a Japanese rubric.

The judge is an engine role, so admission, retries, timeouts and usage accounting are the
engine's (`Role.chat`). Where the role speaks to an OpenAI-compatible server the request asks
for JSON-schema structured output (vLLM: guided decoding); a server that refuses
`response_format` is asked again without it, once, and not again for the rest of the run.
In-process engines and free-form replies go through `parse_judgement`, which reads JSON in
code fences, with single quotes or trailing commas, full-width digits, Japanese keys, or
plain 「正確さ: 4」 lines.
"""

from __future__ import annotations

import ast
import asyncio
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from synthgen.engine.errors import RequestError
from synthgen.engine.messages import image_part, user
from synthgen.engine.prompts import Prompts
from synthgen.engine.replies import json_spans
from synthgen.engine.roles import Role
from synthgen.quality.config import JudgeParams

CRITERIA = ("correctness", "helpfulness", "fluency", "faithfulness")
_ALIASES = {
    "correctness": ("correctness", "正確さ", "正確性", "正しさ", "accuracy"),
    "helpfulness": ("helpfulness", "有用性", "有用さ", "役立ち度", "usefulness"),
    "fluency": ("fluency", "日本語の自然さ", "自然さ", "流暢さ", "流暢性"),
    "faithfulness": ("faithfulness", "忠実さ", "忠実性", "整合性"),
}
_OVERALL = ("score", "overall", "総合", "総合点", "評価", "点数", "スコア")
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def judgement_schema(with_reference: bool) -> dict[str, Any]:
    score = {"type": "integer", "minimum": 1, "maximum": 5}
    props: dict[str, Any] = {c: score for c in CRITERIA[:3]}
    if with_reference:
        props["faithfulness"] = score
    props["reason"] = {"type": "string", "maxLength": 400}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


class JudgeParseError(ValueError):
    """The judge's reply holds no usable score."""


@dataclass(frozen=True)
class Judgement:
    score: float  # mean of the criteria, 1..5
    criteria: dict[str, int]
    reason: str


def _first_object(text: str) -> str | None:
    """The first balanced {...} in text (braces inside single- or double-quoted strings respected)."""
    return next(json_spans(text, quotes="\"'"), None)


def _load_object(blob: str) -> dict[str, Any] | None:
    for candidate in (blob, _TRAILING_COMMA.sub(r"\1", blob)):
        try:
            value = orjson.loads(candidate)
            return value if isinstance(value, dict) else None
        except orjson.JSONDecodeError:
            pass
        try:  # single-quoted keys/strings: a Python literal
            value = ast.literal_eval(candidate)
            return value if isinstance(value, dict) else None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    return None


def _as_score(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        n = float(value)
    elif isinstance(value, str):
        m = re.search(r"\d+(?:\.\d+)?", value)
        if not m:
            return None
        n = float(m.group())
        if re.search(r"/\s*10\b", value):
            n /= 2
    else:
        return None
    if not 1 <= n <= 5:
        return None
    return round(n)


def _from_mapping(obj: dict[str, Any]) -> Judgement | None:
    flat: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict) and ("score" in v or "点数" in v):  # {"correctness": {"score": 4, ...}}
            v = v.get("score", v.get("点数"))
        flat[str(k).strip().lower()] = v
    criteria: dict[str, int] = {}
    for name, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in flat and (s := _as_score(flat[alias])) is not None:
                criteria[name] = s
                break
    reason = next((str(flat[k]) for k in ("reason", "理由", "rationale", "explanation", "コメント") if k in flat), "")
    if criteria:
        return Judgement(round(sum(criteria.values()) / len(criteria), 3), criteria, reason[:400])
    for key in _OVERALL:
        if key in flat and (s := _as_score(flat[key])) is not None:
            return Judgement(float(s), {}, reason[:400])
    return None


def _from_lines(text: str) -> Judgement | None:
    criteria: dict[str, int] = {}
    for name, aliases in _ALIASES.items():
        for alias in aliases:
            m = re.search(rf"{re.escape(alias)}[^\d\n]{{0,12}}(\d+(?:\.\d+)?(?:\s*/\s*10)?)", text, re.I)
            if m and (s := _as_score(m.group(1))) is not None:
                criteria[name] = s
                break
    if criteria:
        return Judgement(round(sum(criteria.values()) / len(criteria), 3), criteria, "")
    for key in _OVERALL:
        m = re.search(rf"{re.escape(key)}[^\d\n]{{0,12}}(\d+(?:\.\d+)?(?:\s*/\s*10)?)", text, re.I)
        if m and (s := _as_score(m.group(1))) is not None:
            return Judgement(float(s), {}, "")
    return None


def parse_judgement(text: str) -> Judgement:
    """Read a judge reply however it came back; raises JudgeParseError when no score is in it."""
    text = unicodedata.normalize("NFKC", text or "").strip()
    blobs = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for blob in blobs:
        obj_text = _first_object(blob)
        if obj_text is None:
            continue
        obj = _load_object(obj_text)
        if obj is not None and (found := _from_mapping(obj)) is not None:
            return found
    found = _from_lines(text)
    if found is None:
        raise JudgeParseError(f"no score in judge reply: {text[:120]!r}")
    return found


class Judge:
    """Scores records through a `judge` Role; one instance per curation run."""

    def __init__(self, role: Role, params: JudgeParams) -> None:
        self.role = role
        self.params = params
        self.prompts = Prompts("quality")
        self.structured = params.structured and role.config.engine == "openai"
        self.structured_refused = False
        self._structured_ok = False
        self._probe: asyncio.Lock | None = None

    def messages(self, question: str, answer: str, reference: str | None, image: bytes | None) -> list[Any]:
        prompt = self.prompts.render("judge", question=question, answer=answer, reference=reference or "")
        if image is not None and self.params.image_inputs:
            return [user([image_part(image), {"type": "text", "text": prompt}])]
        return [user(prompt)]

    async def score(self, question: str, answer: str, reference: str | None = None,
                    image: bytes | None = None) -> Judgement:
        """A Judgement; raises RequestError (spent retries) or JudgeParseError (no score)."""
        messages = self.messages(question, answer, reference, image)
        sampling: dict[str, Any] = {"max_tokens": self.params.max_tokens, "temperature": self.params.temperature}
        if self.structured and not self.structured_refused:
            with_ref = bool(reference)
            if self._structured_ok:
                return parse_judgement(await self._structured(messages, sampling, with_ref))
            # Until one structured request has gone through, requests go one at a time, so a
            # server without response_format refuses once rather than once per record in flight.
            self._probe = self._probe or asyncio.Lock()
            async with self._probe:
                if not self.structured_refused and not self._structured_ok:
                    try:
                        text = await self._structured(messages, sampling, with_ref)
                        self._structured_ok = True
                        return parse_judgement(text)
                    except RequestError as exc:
                        if exc.reason not in ("http_400", "http_422"):
                            raise
                        self.structured_refused = True  # no structured output here: ask plainly
            if self._structured_ok:  # settled by another request while this one waited
                return parse_judgement(await self._structured(messages, sampling, with_ref))
        result = await self.role.chat(messages, **sampling)
        return parse_judgement(result.text)

    async def _structured(self, messages: list[Any], sampling: dict[str, Any], with_reference: bool) -> str:
        fmt = {"type": "json_schema", "json_schema": {
            "name": "quality_judgement", "strict": True, "schema": judgement_schema(with_reference)}}
        return (await self.role.chat(messages, response_format=fmt, **sampling)).text
