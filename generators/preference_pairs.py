"""preference-pairs: two answers to one persona-driven problem, ranked by the judge, for DPO.

Tanuki-8x8B's best model (seed 003) was the one DPO-trained on persona-driven synthetic data.
Recipe: draw a problem exactly as persona-qa does (persona or keypoint, task, difficulty) ->
answer it twice, the two answers differing on purpose: by model (`answerer` vs `rival`), by
temperature, or by system prompt (careful vs terse) -> the judge reads both, in an order drawn
per record so position bias cannot pick a side, and names the better one with a reason ->
the row is `prompt`, `chosen`, `rejected` in TRL's conversational preference layout (lists of
messages), which `DPOTrainer` reads as is; `to_dpo` drops the metadata or flattens to strings.

The chosen answer must pass every persona-qa answer check (style rule, final-answer line,
length cap): DPO would otherwise push the model toward a flawed answer merely because its
rival was worse. The rejected one only needs to be a real, complete Japanese answer.
`judge_both_orders` asks twice with the order swapped and keeps the pair only if the verdicts
agree, at twice the judge's cost.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Iterator
from typing import Any, Literal

import datasets
from pydantic import Field, model_validator

from synthgen.engine.messages import ChatResult, assistant, system, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip
from synthgen.engine.roles import Role
from synthgen.generators.banks import by_name
from synthgen.generators.persona_qa import QuestionParams, check_answer, check_question, question_items
from synthgen.generators.textcheck import is_japanese, strip_label

Contrast = Literal["models", "temperatures", "prompts"]
_VERDICT = re.compile(r"^\W*([AB])\W*$|^\W*(?:回答)?\s*([AB])\s*(?:の方)?(?:が良い|がよい|が優れている)?\W*$")
_REASON = re.compile(r"^\W*理由\s*[:：]\s*(.+)$", re.S | re.M)


class Params(QuestionParams):
    """Parameters of preference-pairs; the problem source is persona-qa's."""

    contrast: Contrast = Field(
        "temperatures", description="how the two answers differ: models (answerer vs rival role: give "
                                    "the rival its own model, or both answer alike), "
                                    "temperatures (answerer at each of `temperatures`) or prompts (careful vs terse)")
    temperatures: tuple[float, float] = Field((0.3, 1.1), description="contrast=temperatures: the two temperatures")
    judge_both_orders: bool = Field(False, description="ask the judge in both orders; keep only agreeing verdicts")
    turns: int = Field(1, ge=1, le=4, description="the pair answers turn n; earlier turns (follow-ups on the "
                                                  "same problem, answered by `answerer`) form the prompt")
    max_reason_chars: int = Field(600, ge=10)

    @model_validator(mode="after")
    def _distinct_temperatures(self) -> Params:
        low, high = self.temperatures
        if not (0 <= low <= 2 and 0 <= high <= 2) or low == high:
            raise ValueError("temperatures must be two different values in [0, 2]")
        return self


def features(_params: Params) -> datasets.Features:
    text = datasets.Value("string")
    turn = [{"role": text, "content": text}]
    origin = {"role": text, "model": text, "temperature": datasets.Value("float32"), "prompt": text}
    return datasets.Features({
        "prompt": turn, "chosen": turn, "rejected": turn,
        "judge_reason": text, "judge_model": text, "contrast": text,
        "chosen_from": origin, "rejected_from": origin,
        "persona": text, "persona_id": text, "keypoint": text, "task": text, "difficulty": text,
    })


def inputs(ctx: InputContext[Params]) -> Iterator[dict[str, Any]]:
    yield from question_items(ctx.params, ctx.seed)


def _candidates(p: Params, ctx: RecordContext[Params]) -> list[tuple[Role, dict[str, Any], str, float | None]]:
    """(role, sampling, system-prompt name, temperature) of the two answers."""
    answerer = ctx.role("answerer")
    if p.contrast == "models":
        return [(answerer, {}, "answer_system", None), (ctx.role("rival"), {}, "answer_system", None)]
    if p.contrast == "temperatures":
        return [(answerer, {"temperature": t}, "answer_system", t) for t in p.temperatures]
    return [(answerer, {}, "answer_system", None), (answerer, {}, "answer_terse", None)]


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    p = ctx.params
    task = by_name(p.tasks, item["task"])
    level = by_name(p.difficulties, item["difficulty"])
    writer, judge = ctx.role("writer"), ctx.role("judge")
    ask = ctx.prompts.render("question", persona=item["persona"], keypoint=item["keypoint"], task=task,
                             difficulty=level)
    question = check_question(await writer.chat([user(ask)]), p, turn=1)
    dialogue = [user(question)]
    careful = system(ctx.prompts.render("answer_system", task=task, marker=p.final_answer_marker))
    for turn in range(2, p.turns + 1):  # earlier turns: one checked answer each, then a follow-up
        reply = await ctx.role("answerer").chat([careful, *dialogue])
        dialogue.append(assistant(check_answer(reply, p, task, turn=turn - 1)))
        question = check_question(await writer.chat([*dialogue, user(ctx.prompts.render("followup"))]), p, turn=turn)
        if any(question == m["content"] for m in dialogue if m["role"] == "user"):
            raise Skip("followup_repeats", question[:200])
        dialogue.append(user(question))

    plans = _candidates(p, ctx)
    replies = await asyncio.gather(*[
        role.chat([system(ctx.prompts.render(prompt, task=task, marker=p.final_answer_marker)), *dialogue],
                  **sampling)
        for role, sampling, prompt, _ in plans])
    answers = [_complete(r, p, i) for i, r in enumerate(replies)]
    if _same(answers[0], answers[1]):
        raise Skip("answers_identical", answers[0][:200])

    first = ctx.rng.randrange(2)  # which candidate the judge sees as A
    shown = _as_text(dialogue)
    better, reason = await _judge(judge, ctx, shown, answers, first, task.final_answer, p)
    if p.judge_both_orders:
        again, _ = await _judge(judge, ctx, shown, answers, 1 - first, task.final_answer, p)
        if again != better:
            raise Skip("judge_inconsistent", f"candidate {better} then {again}")
    worse = 1 - better
    try:  # the chosen answer must be one we would train on by itself
        check_answer(replies[better], p, task, turn=p.turns)
    except Skip as exc:
        raise Skip(f"chosen_{exc.reason}", exc.detail) from None

    def origin(i: int) -> dict[str, Any]:
        role, _, prompt, temperature = plans[i]
        return {"role": role.name, "model": role.model, "temperature": temperature, "prompt": prompt}

    return [{
        "prompt": dialogue, "chosen": [assistant(answers[better])], "rejected": [assistant(answers[worse])],
        "judge_reason": reason, "judge_model": judge.model, "contrast": p.contrast,
        "chosen_from": origin(better), "rejected_from": origin(worse),
        "persona": item["persona"], "persona_id": item["persona_id"], "keypoint": item["keypoint"],
        "task": task.name, "difficulty": level.name,
    }]


def _as_text(dialogue: list[dict[str, Any]]) -> str:
    """The prompt as the judge reads it: the question, or the conversation up to the last question."""
    if len(dialogue) == 1:
        return str(dialogue[0]["content"])
    names = {"user": "ユーザー", "assistant": "アシスタント"}
    lines = [f"{names[m['role']]}：{m['content']}" for m in dialogue]
    return "（これまでの会話。最後のユーザーの質問への回答を比べること）\n" + "\n".join(lines)


def _complete(result: ChatResult, p: Params, index: int) -> str:
    text = strip_label(result.text)
    if not text:
        raise Skip("empty_answer", f"candidate {index}")
    if result.finish_reason == "length":
        raise Skip("truncated_answer", f"candidate {index}: {text[-200:]}")
    if not is_japanese(text, p.japanese_min_ratio):
        raise Skip("not_japanese", f"candidate {index}: {text[:200]}")
    return text


def _same(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return re.sub(r"\s+", "", unicodedata.normalize("NFKC", s))

    return norm(a) == norm(b)


async def _judge(judge: Role, ctx: RecordContext[Params], question: str, answers: list[str], first: int,
                 final_answer: bool, p: Params) -> tuple[int, str]:
    """Which candidate (0 or 1) the judge prefers when candidate `first` is shown as A, and why."""
    shown = [answers[first], answers[1 - first]]
    prompt = ctx.prompts.render("judge", question=question, a=shown[0], b=shown[1], final_answer=final_answer,
                                marker=p.final_answer_marker)
    verdict = await judge.chat([user(prompt)], temperature=0.0)
    label, reason = parse_verdict(verdict.text)
    if label is None:
        raise Skip("judge_unclear", verdict.text[:200])
    if not reason:
        raise Skip("judge_without_reason", verdict.text[:200])
    return (first if label == "A" else 1 - first), reason[:p.max_reason_chars]


def parse_verdict(text: str) -> tuple[str | None, str]:
    """「A」 or 「B」 on the first line (full-width letters too), then 「理由：…」."""
    text = unicodedata.normalize("NFKC", text).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None, ""
    match = _VERDICT.match(lines[0].strip().replace("**", ""))
    label = (match.group(1) or match.group(2)) if match else None
    found = _REASON.search(text)
    reason = found.group(1).strip() if found else "\n".join(lines[1:]).strip()
    return label, reason


def to_dpo(ds: datasets.Dataset, *, conversational: bool = True) -> datasets.Dataset:
    """Only TRL's DPO columns: message lists (conversational) or plain strings (standard)."""
    keep = ds.select_columns(["prompt", "chosen", "rejected"])
    if conversational:
        return keep

    def flatten(row: dict[str, Any]) -> dict[str, str]:
        return {k: "\n".join(m["content"] for m in row[k]) for k in ("prompt", "chosen", "rejected")}

    return keep.map(flatten, features=datasets.Features({k: datasets.Value("string")
                                                         for k in ("prompt", "chosen", "rejected")}))


generator = Generator[Params](
    name="preference-pairs",
    version="1",
    description="DPO pairs: two answers to a persona-driven problem (different models, temperatures or prompts), "
                "ranked by the judge with its reason; TRL's prompt/chosen/rejected layout",
    params_model=Params,
    roles=("writer", "answerer", "rival", "judge"),
    reads="personas (as persona-qa: the bundled set, a file or Hub dataset) or the keypoint bank",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="preference_pairs",
)
