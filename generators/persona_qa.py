"""persona-qa: persona-driven multi-turn Japanese Q&A (the recipe of the seeds' 003 slides).

Recipe: pick a persona, a task and a difficulty -> the writer poses Q1 as that persona
would meet it -> the answerer answers -> the writer asks a follow-up that stays on the
same problem (it sees Q1 and A1; without them follow-ups drift to unrelated problems)
-> the answerer answers, for as many turns as asked.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthgen.engine.messages import ChatResult, assistant, system, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip, unique_names
from synthgen.generators.textcheck import is_japanese, leaks_answer, strip_label


class Task(BaseModel):
    name: str = Field(..., pattern=r"^[a-z0-9_-]+$")
    label: str
    instruction: str
    weight: float = Field(1.0, gt=0)


DEFAULT_TASKS = [
    Task(name="math", label="数学", instruction="具体的な数値を使い、計算によって答えが一つに決まる問題にすること。"),
    Task(name="reasoning", label="論理推論",
         instruction="与えられた条件だけから論理的に答えを導ける推論問題にすること。必要な条件はすべて問題文に書くこと。"),
    Task(name="coding", label="プログラミング",
         instruction="Pythonで解ける小さなプログラミング課題にし、入力と期待する出力を明確にすること。"),
    Task(name="knowledge", label="日常の知識",
         instruction="暮らしや仕事に役立つ一般的な知識を問う質問にし、事実に基づいて答えられるものにすること。"),
]


class Params(BaseModel):
    """Parameters of persona-qa; defaults reproduce the seeds' setup on our own persona set."""

    model_config = ConfigDict(extra="forbid")

    personas: str | None = Field(None, description="'builtin' (default), a local jsonl/parquet/csv, or a Hub dataset id")
    persona_column: str | None = None
    persona_limit: int | None = Field(None, ge=1)
    tasks: list[Task] = Field(default_factory=lambda: list(DEFAULT_TASKS), min_length=1)
    difficulties: list[str] = Field(default_factory=lambda: ["易しい", "普通", "難しい"], min_length=1)
    turns: int = Field(2, ge=1, le=8, description="question/answer pairs per conversation")
    min_answer_chars: int = Field(20, ge=1)
    max_question_chars: int = Field(1200, ge=20)
    japanese_min_ratio: float = Field(0.3, ge=0, le=1)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[Task]) -> list[Task]:
        return unique_names(tasks, "task")


def features(_params: Params) -> datasets.Features:
    return datasets.Features({
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "persona": datasets.Value("string"),
        "persona_id": datasets.Value("string"),
        "task": datasets.Value("string"),
        "difficulty": datasets.Value("string"),
        "models": {"writer": datasets.Value("string"), "answerer": datasets.Value("string")},
    })


def inputs(ctx: InputContext[Params]) -> Iterator[dict[str, Any]]:
    """An endless seeded stream of (persona, task, difficulty); the engine stops it."""
    from synthgen.personas.loaders import load_personas

    p = ctx.params
    personas = load_personas(p.personas, limit=p.persona_limit, column=p.persona_column)
    if not personas:
        raise ValueError("the persona source yielded no personas")
    rng = random.Random(ctx.seed)
    weights = [t.weight for t in p.tasks]
    index = 0
    while True:
        persona = rng.choice(personas)
        task = rng.choices(p.tasks, weights)[0]
        yield {"index": index, "persona_id": persona.id, "persona": persona.text, "task": task.name,
               "difficulty": rng.choice(p.difficulties)}
        index += 1


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    p = ctx.params
    task = next(t for t in p.tasks if t.name == item["task"])
    writer, answerer = ctx.role("writer"), ctx.role("answerer")
    answer_system = system(ctx.prompts.render("answer_system"))

    ask = ctx.prompts.render("question", persona=item["persona"], task=task, difficulty=item["difficulty"])
    question = _question(await writer.chat([user(ask)]), p, turn=1)
    dialogue = [user(question)]
    for turn in range(1, p.turns + 1):
        if turn > 1:
            follow = await writer.chat([*dialogue, user(ctx.prompts.render("followup"))])
            question = _question(follow, p, turn=turn)
            if any(question == m["content"] for m in dialogue if m["role"] == "user"):
                raise Skip("followup_repeats", question)
            dialogue.append(user(question))
        dialogue.append(assistant(_answer(await answerer.chat([answer_system, *dialogue]), p, turn=turn)))

    return [{
        "messages": dialogue, "persona": item["persona"], "persona_id": item["persona_id"],
        "task": task.name, "difficulty": item["difficulty"],
        "models": {"writer": writer.model, "answerer": answerer.model},
    }]


def _question(result: ChatResult, p: Params, *, turn: int) -> str:
    text = strip_label(result.text)
    if not text:
        raise Skip("empty_question", f"Q{turn}")
    if not is_japanese(text, p.japanese_min_ratio):
        raise Skip("not_japanese", f"Q{turn}: {text[:300]}")
    if result.finish_reason == "length":
        raise Skip("truncated_question", f"Q{turn}: {text[-200:]}")
    if len(text) > p.max_question_chars:
        raise Skip("question_too_long", f"Q{turn}: {len(text)} chars")
    if leaks_answer(text):
        raise Skip("question_leaks_answer", f"Q{turn}: {text[:300]}")
    return text


def _answer(result: ChatResult, p: Params, *, turn: int) -> str:
    text = strip_label(result.text)
    if len(text) < p.min_answer_chars:
        raise Skip("answer_too_short", f"A{turn}: {text!r}")
    if not is_japanese(text, p.japanese_min_ratio):
        raise Skip("not_japanese", f"A{turn}: {text[:300]}")
    if result.finish_reason == "length":
        raise Skip("truncated_answer", f"A{turn}: {text[-200:]}")
    return text


generator = Generator[Params](
    name="persona-qa",
    version="1",
    description="Persona-driven multi-turn Japanese Q&A (math, reasoning, coding, knowledge)",
    params_model=Params,
    roles=("writer", "answerer"),
    reads="personas: the bundled Japanese set, a Persona-Hub/FinePersonas-style file or Hub dataset",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="persona_qa",
)
