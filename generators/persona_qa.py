"""persona-qa: persona-driven multi-turn Japanese Q&A (the recipe of the seeds' 003 slides).

Recipe: pick a persona, a task and a difficulty -> the writer poses Q1 as that persona
would meet it -> the answerer answers -> the writer asks a follow-up that stays on the
same problem (it sees Q1 and A1; without them follow-ups drift to unrelated problems)
-> the answerer answers, for as many turns as asked.

As the seeds set it up: difficulty levels are defined, not named (basic = 「小学生でも正しく解ける」,
generators/data/difficulties.yaml); a persona shows one to three of its traits, so questions
use it naturally instead of cramming every trait in; answers follow a style rule (です・ます)
and, for tasks with one result, end on a final-answer line (「答え：…」) that graders and DPO
pairs can compare; questions and answers have length caps. `driver: keypoint` is seed 003's
keypoint-driven variant: the persona in the prompt is replaced by a keypoint of the task
(generators/data/keypoints.yaml), e.g. 「連立方程式」 for maths.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any, Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synthgen.engine.messages import ChatResult, assistant, system, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip, unique_names
from synthgen.generators import data
from synthgen.generators.banks import DifficultyLevels, by_name, difficulties, draw
from synthgen.generators.persona_traits import asker
from synthgen.generators.textcheck import is_japanese, leaks_answer, strip_label

_CODE = re.compile(r"```.*?```", re.S)
_POLITE = re.compile(r"(?:です|ます|でした|ました|ません|ください|でしょう)[。！!？?」)）]?\s*$", re.M)


class Task(BaseModel):
    name: str = Field(..., pattern=r"^[a-z0-9_-]+$")
    label: str
    instruction: str
    weight: float = Field(1.0, gt=0)
    final_answer: bool = Field(False, description="answers end with the final-answer line (one result to compare)")


DEFAULT_TASKS = [
    Task(name="math", label="数学", instruction="具体的な数値を使い、計算によって答えが一つに決まる問題にすること。",
         final_answer=True),
    Task(name="reasoning", label="論理推論",
         instruction="与えられた条件だけから論理的に答えを導ける推論問題にすること。必要な条件はすべて問題文に書くこと。",
         final_answer=True),
    Task(name="coding", label="プログラミング",
         instruction="Pythonで解ける小さなプログラミング課題にし、入力と期待する出力を明確にすること。"),
    Task(name="knowledge", label="日常の知識",
         instruction="暮らしや仕事に役立つ一般的な知識を問う質問にし、事実に基づいて答えられるものにすること。"),
]


class QuestionParams(BaseModel):
    """Where problems come from and what answers must satisfy; shared with preference-pairs."""

    model_config = ConfigDict(extra="forbid")

    personas: str | None = Field(None, description="'builtin' (default), a local jsonl/parquet/csv, or a Hub dataset id")
    persona_column: str | None = None
    persona_limit: int | None = Field(None, ge=1)
    driver: Literal["persona", "keypoint"] = Field(
        "persona", description="what seeds each problem: a persona, or a keypoint of the task (seed 003's variant)")
    keypoints: dict[str, list[str]] = Field(default_factory=lambda: data.load("keypoints.yaml"),
                                            description="task name -> keypoints, for driver=keypoint")
    tasks: list[Task] = Field(default_factory=lambda: list(DEFAULT_TASKS), min_length=1)
    difficulties: DifficultyLevels = Field(default_factory=lambda: difficulties("text"), min_length=1,
                                           description="levels as the seeds define them (basic: 小学生でも解ける)")
    final_answer_marker: str = Field("答え：", min_length=1, max_length=20,
                                     description="the line that states the result, for tasks with final_answer")
    require_polite: bool = Field(True, description="answers in です・ます (the style rule); others are dropped")
    min_answer_chars: int = Field(20, ge=1)
    max_answer_chars: int = Field(2000, ge=50, description="longer answers are dropped (length cap)")
    max_question_chars: int = Field(600, ge=20)
    japanese_min_ratio: float = Field(0.3, ge=0, le=1)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[Task]) -> list[Task]:
        return unique_names(tasks, "task")

    @model_validator(mode="after")
    def _keypoints_cover_tasks(self) -> QuestionParams:
        if self.driver == "keypoint":
            missing = [t.name for t in self.tasks if not self.keypoints.get(t.name)]
            if missing:
                raise ValueError(f"driver=keypoint needs keypoints for tasks {missing}")
        return self


class Params(QuestionParams):
    """Parameters of persona-qa; defaults reproduce the seeds' setup on our own persona set."""

    turns: int = Field(2, ge=1, le=8, description="question/answer pairs per conversation")


def features(_params: Params) -> datasets.Features:
    return datasets.Features({
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "persona": datasets.Value("string"),
        "persona_id": datasets.Value("string"),
        "keypoint": datasets.Value("string"),
        "task": datasets.Value("string"),
        "difficulty": datasets.Value("string"),
        "models": {"writer": datasets.Value("string"), "answerer": datasets.Value("string")},
    })


def inputs(ctx: InputContext[Params]) -> Iterator[dict[str, Any]]:
    yield from question_items(ctx.params, ctx.seed)


def question_items(p: QuestionParams, seed: int) -> Iterator[dict[str, Any]]:
    """An endless seeded stream of (persona or keypoint, task, difficulty); the engine stops it.

    `persona` is the traits this record shows (a subset of the persona's profile)."""
    from synthgen.personas.loaders import load_personas

    personas = []
    if p.driver == "persona":
        personas = load_personas(p.personas, limit=p.persona_limit, column=p.persona_column)
        if not personas:
            raise ValueError("the persona source yielded no personas")
    rng = random.Random(seed)
    weights = [t.weight for t in p.tasks]
    index = 0
    while True:
        task = rng.choices(p.tasks, weights)[0]
        item: dict[str, Any] = {"index": index, "task": task.name, "difficulty": draw(p.difficulties, rng).name,
                                "persona_id": "", "persona": "", "keypoint": ""}
        if p.driver == "persona":
            who = asker(rng.choice(personas), rng)
            item.update(persona_id=who.id, persona=who.shown)
        else:
            item["keypoint"] = rng.choice(p.keypoints[task.name])
        yield item
        index += 1


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    p = ctx.params
    task = by_name(p.tasks, item["task"])
    level = by_name(p.difficulties, item["difficulty"])
    writer, answerer = ctx.role("writer"), ctx.role("answerer")
    answer_system = system(ctx.prompts.render("answer_system", task=task, marker=p.final_answer_marker))

    ask = ctx.prompts.render("question", persona=item["persona"], keypoint=item["keypoint"], task=task,
                             difficulty=level)
    question = check_question(await writer.chat([user(ask)]), p, turn=1)
    dialogue = [user(question)]
    for turn in range(1, p.turns + 1):
        if turn > 1:
            follow = await writer.chat([*dialogue, user(ctx.prompts.render("followup"))])
            question = check_question(follow, p, turn=turn)
            if any(question == m["content"] for m in dialogue if m["role"] == "user"):
                raise Skip("followup_repeats", question)
            dialogue.append(user(question))
        reply = await answerer.chat([answer_system, *dialogue])
        dialogue.append(assistant(check_answer(reply, p, task, turn=turn)))

    return [{
        "messages": dialogue, "persona": item["persona"], "persona_id": item["persona_id"],
        "keypoint": item["keypoint"], "task": task.name, "difficulty": level.name,
        "models": {"writer": writer.model, "answerer": answerer.model},
    }]


def check_question(result: ChatResult, p: QuestionParams, *, turn: int) -> str:
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


def check_answer(result: ChatResult, p: QuestionParams, task: Task, *, turn: int) -> str:
    text = strip_label(result.text)
    if len(text) < p.min_answer_chars:
        raise Skip("answer_too_short", f"A{turn}: {text!r}")
    if not is_japanese(text, p.japanese_min_ratio):
        raise Skip("not_japanese", f"A{turn}: {text[:300]}")
    if result.finish_reason == "length":
        raise Skip("truncated_answer", f"A{turn}: {text[-200:]}")
    if len(text) > p.max_answer_chars:
        raise Skip("answer_too_long", f"A{turn}: {len(text)} chars")
    if task.final_answer and final_answer(text, p.final_answer_marker) is None:
        raise Skip("no_final_answer", f"A{turn}: {text[-200:]}")
    if p.require_polite and not _POLITE.search(_CODE.sub("", text)):
        raise Skip("answer_not_polite", f"A{turn}: {text[:200]}")
    return text


def final_answer(text: str, marker: str) -> str | None:
    """The result stated on the answer's last marker line (「答え：6分」 -> 「6分」), if any."""
    for line in reversed(text.strip().splitlines()):
        stripped = line.strip().lstrip("*#> ").replace("**", "")
        if stripped.startswith(marker):
            value = stripped[len(marker):].strip()
            return value or None
    return None


generator = Generator[Params](
    name="persona-qa",
    version="2",
    description="Persona- or keypoint-driven multi-turn Japanese Q&A (math, reasoning, coding, knowledge) "
                "at defined difficulty levels, with a final-answer line and a です・ます style rule",
    params_model=Params,
    roles=("writer", "answerer"),
    reads="personas: the bundled Japanese set, a Persona-Hub/FinePersonas-style file or Hub dataset",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="persona_qa",
)
