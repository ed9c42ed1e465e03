"""The LLM judge: our Japanese prompts, structured output where the server has it, robust parsing
where it does not, retries on unparseable replies, and a cache so a re-run costs nothing.

Two judgements:
- `heron`: the reference answer and the model's answer, each 1-10 against the image's
  description (Heron-Bench); the task score is a ratio of means (see scoring.py).
- `answer`: the model's answer 1-5 against the reference (llm-jp-eval-mm's "LLM" columns).

A reply that cannot be parsed is asked again (up to `retries` more times); if it still cannot,
the judgement is recorded as unparseable with the raw reply and left out of every mean — never
averaged in as -1, which is how llm-jp-eval-mm's Heron scorer counts it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from synthgen.engine.errors import RequestError
from synthgen.engine.messages import system, user
from synthgen.engine.prompts import Prompts
from synthgen.engine.replies import json_spans
from synthgen.evaluator.cache import JudgeCache, judgement_key

# judgement kind -> (fields, lowest, highest)
KINDS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "heron": (("score_a", "score_b"), 1, 10),
    "answer": (("score",), 1, 5),
}


class JudgeParseError(ValueError):
    pass


@dataclass
class Judgement:
    scores: dict[str, int] | None  # None: unparseable after every attempt, or the request failed
    reason: str = ""
    raw: str = ""
    attempts: int = 0
    cached: bool = False
    error: str | None = None  # "unparseable" or a request failure reason
    structured: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores) if self.scores is not None else None, "reason": self.reason,
                "raw": self.raw, "attempts": self.attempts, "cached": self.cached, "error": self.error,
                "structured": self.structured}


# -- parsing ------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def _objects(text: str) -> list[str]:
    """Every balanced {...} span (string-aware), outermost first."""
    return list(json_spans(text))


def _loads_lenient(blob: str) -> Any:
    try:
        return json.loads(blob)
    except json.JSONDecodeError:
        pass
    fixed = blob.replace("“", '"').replace("”", '"').replace("：", ":").replace("，", ",")
    fixed = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", fixed)
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)  # trailing commas
    if '"' not in fixed:
        fixed = fixed.replace("'", '"')
    fixed = re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:", r'\1"\2":', fixed)  # bare keys
    try:
        return json.loads(fixed, strict=False)
    except json.JSONDecodeError:
        return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.0+)?\s*(点|/\s*\d+)?\s*", value):
        return int(float(re.match(r"\s*(\d+(\.0+)?)", value).group(1)))  # type: ignore[union-attr]
    return None


def _checked(data: dict[str, Any], fields: tuple[str, ...], lo: int, hi: int) -> tuple[dict[str, int], str] | None:
    scores = {}
    for name in fields:
        value = _as_int(data.get(name))
        if value is None:
            return None
        if not lo <= value <= hi:
            raise JudgeParseError(f"{name}={value} is outside {lo}-{hi}")
        scores[name] = value
    reason = data.get("reason")
    return scores, reason if isinstance(reason, str) else ""


def parse_judgement(reply: str, kind: str) -> tuple[dict[str, int], str]:
    """(scores, reason) from a judge reply: JSON, fenced JSON, JSON inside prose, lenient JSON
    (single quotes, trailing commas, bare keys, full-width colons), a truncated object whose score
    fields were written, or — for the one-score judgement — a bare "score: 4" / "4". Raises
    JudgeParseError otherwise, and on a score outside the scale (never clamped)."""
    fields, lo, hi = KINDS[kind]
    text = _THINK.sub("", reply or "").strip()
    if not text:
        raise JudgeParseError("empty reply")
    candidates = [m.strip() for m in _FENCE.findall(text)] + _objects(text)
    for blob in candidates:
        for obj in [blob, *_objects(blob)[1:]]:
            data = _loads_lenient(obj)
            if isinstance(data, dict):
                found = _checked(data, fields, lo, hi)
                if found:
                    return found
    # A partial or malformed object: take the fields it did write.
    partial = {}
    for name in fields:
        m = re.search(rf"[\"']?{name}[\"']?\s*[:：=]\s*[\"']?(\d+)", text)
        if m:
            partial[name] = int(m.group(1))
    if len(partial) == len(fields):
        reason = re.search(r"[\"']?reason[\"']?\s*[:：]\s*\"((?:[^\"\\]|\\.)*)", text)
        return _checked(partial, fields, lo, hi)[0], (reason.group(1) if reason else "")  # type: ignore[index]
    if len(fields) == 1:
        m = re.fullmatch(r"\s*(\d+)\s*(点|/\s*\d+)?\s*[。.]?\s*", text) or re.search(
            r"(?:score|スコア|評価|点数|得点)\s*(?:は|[:：=])\s*(\d+)", text, re.IGNORECASE)
        if m:
            return _checked({fields[0]: int(m.group(1))}, fields, lo, hi)[0], ""  # type: ignore[index]
    raise JudgeParseError(f"no {'/'.join(fields)} in reply: {text[:120]!r}")


def response_format(kind: str) -> dict[str, Any]:
    """OpenAI-style json_schema response format (vLLM's guided decoding honours it)."""
    fields, lo, hi = KINDS[kind]
    props: dict[str, Any] = {"reason": {"type": "string"}}
    props.update({f: {"type": "integer", "minimum": lo, "maximum": hi} for f in fields})
    return {"type": "json_schema", "json_schema": {
        "name": f"{kind}_judgement", "strict": True,
        "schema": {"type": "object", "properties": props, "required": ["reason", *fields],
                   "additionalProperties": False}}}


# -- the judge ----------------------------------------------------------------------------------

@dataclass
class JudgeStats:
    requests: int = 0
    cache_hits: int = 0
    retried_unparseable: int = 0
    unparseable: int = 0
    failed: int = 0
    structured_fallback: bool = False
    by_error: dict[str, int] = field(default_factory=dict)


class Judge:
    """One judge role; `structured` sends response_format until the server refuses it."""

    PROMPTS: ClassVar[dict[str, str]] = {"heron": "heron_judge", "answer": "answer_judge"}

    def __init__(self, role: Any, cache: JudgeCache | None, *, structured: bool = True, retries: int = 2,
                 max_tokens: int = 512, prompts: Prompts | None = None) -> None:
        self.role = role
        self.cache = cache
        self.structured = structured
        self.retries = retries
        self.max_tokens = max_tokens
        self.prompts = prompts or Prompts("evaluator")
        self.stats = JudgeStats()

    @property
    def model(self) -> str:
        return str(self.role.model)

    def prompt_hash(self, kind: str) -> str:
        h = self.prompts.hashes
        return f"{h['judge_system']}:{h[self.PROMPTS[kind]]}"

    def messages(self, kind: str, **variables: str) -> list[dict[str, Any]]:
        return [system(self.prompts.render("judge_system")), user(self.prompts.render(self.PROMPTS[kind], **variables))]

    async def judge(self, kind: str, task: str, sample_id: str, answer: str, **variables: str) -> Judgement:
        key = judgement_key(task, sample_id, answer, self.model, self.prompt_hash(kind))
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return Judgement(**{**hit, "cached": True})
        messages = self.messages(kind, answer=answer, **variables)
        result = await self._ask(kind, messages)
        if self.cache is not None and result.error is None:  # failures are asked again next run
            self.cache.put(key, {**result.as_dict(), "cached": False})
        return result

    async def _ask(self, kind: str, messages: list[dict[str, Any]]) -> Judgement:
        raw = ""
        problem = ""
        attempt = 0
        while attempt <= self.retries:
            structured = self.structured
            sampling: dict[str, Any] = {"temperature": 0.0, "max_tokens": self.max_tokens}
            if attempt > 0:
                sampling["seed"] = attempt  # a different draw where the server samples anyway
            if structured:
                sampling["response_format"] = response_format(kind)
            try:
                self.stats.requests += 1
                result = await self.role.chat(messages, **sampling)
            except RequestError as exc:
                if structured and not exc.retryable and exc.reason in ("http_400", "http_422", "bad_request"):
                    self.structured = False  # this server does not take response_format: parse instead
                    self.stats.structured_fallback = True
                    continue
                self.stats.failed += 1
                self.stats.by_error[exc.reason] = self.stats.by_error.get(exc.reason, 0) + 1
                return Judgement(None, raw=raw, attempts=attempt + 1, error=exc.reason, structured=structured)
            attempt += 1
            raw = result.text
            try:
                scores, reason = parse_judgement(raw, kind)
            except JudgeParseError as exc:
                problem = str(exc)
                if attempt <= self.retries:
                    self.stats.retried_unparseable += 1
                continue
            return Judgement(scores, reason=reason, raw=raw, attempts=attempt, structured=structured)
        self.stats.unparseable += 1
        self.stats.by_error["unparseable"] = self.stats.by_error.get("unparseable", 0) + 1
        return Judgement(None, reason=problem, raw=raw, attempts=attempt, error="unparseable",
                         structured=self.structured)
