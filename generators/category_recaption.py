"""category-recaption: questions of many categories about each image, answered from its caption.

The seeds' second image recipe: a VLM alone answered monotonously, so a Japanese LLM read
each image's detailed caption, asked a question of a given category (description,
reasoning, counting, OCR, ...) and answered it "as if it saw the image". Categories are
dealt to images in inputs, balanced to their weights, so each record is one question and a
dropped one is counted with its reason. Answers that cite the caption, or that a check
finds contradict it, are dropped: a VLM trained on them would learn to quote text it never sees.

The category bank is data (generators/data/categories.yaml): MM-Instruct's long-form task
types (stories, poems, reviews, guides, itineraries, lessons, ...) beside short-answer ones.
Creative and advice categories are requests (依頼文), not questions with one answer; each
category says how its answer is laid out and how long it runs; short-answer questions carry
a cue in the user turn (「単語や短い語句で答えてください。」) so a model trained on them learns
to answer tersely only when asked to (LLaVA-1.5's fix). A persona from the persona set and a
difficulty level pose each question, and a record may run 2-4 turns, each later question
building on the answers before it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Literal

import datasets
from pydantic import BaseModel, Field, field_validator, model_validator

from synthgen.engine.messages import ChatResult, assistant, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip, unique_names
from synthgen.generators import data
from synthgen.generators.banks import DifficultyLevels, by_name, difficulties, draw
from synthgen.generators.images.checks import is_refusal, mentions_caption
from synthgen.generators.images.download import Downloader, open_downloader
from synthgen.generators.images.sources import ImageInputParams, describe, iter_items, load_image
from synthgen.generators.persona_traits import asker
from synthgen.generators.textcheck import is_japanese, strip_label
from synthgen.policy import InputSource

_KANA_OR_KANJI = re.compile(r"[\u3041-\u30ff\u4e00-\u9fff]")
DEFAULT_SHORT_CUES = ("単語や短い語句で答えてください。", "一言で答えてください。", "短い語句で答えてください。")
# A request reads 「〜してください」「〜をお願いします」「〜してもらえますか」 and the like.
_REQUEST = re.compile(r"ください|下さい|お願い|ほしい|欲しい|もらえ|もらいたい|いただけ|頂け|いただき|くれ|てみて|しなさい")
_NUMBER_FIRST = re.compile(r"^[「『(（]?\s*(?:[0-9０-９]|[一二三四五六七八九十百千]+(?:つ|個|人|匹|頭|羽|本|枚|台|冊|軒|件|回|杯|着|足|羽))")
_QUOTED = re.compile(r"「([^「」]{1,80})」|\"([^\"]{1,80})\"|“([^”]{1,80})”")


class Category(BaseModel):
    name: str = Field(..., pattern=r"^[a-z0-9_-]+$")
    label: str
    instruction: str
    weight: float = Field(1.0, gt=0)
    requires: str | None = Field(None, description="regex the caption must match for this category to be dealt")
    phrasing: Literal["question", "request"] = Field(
        "question", description="question: one with an answer; request: a request (依頼文) to write or advise")
    answer: Literal["short", "long"] = Field("long", description="short answers get a cue in the user turn")
    format: str = Field("", description="how the answer is laid out (told to the answering model)")
    length: str = Field("", description="how long the answer runs (told to the answering model)")
    check: Literal["none", "number_first", "verbatim"] = Field(
        "none", description="number_first: the count comes first; verbatim: text quoted as the caption has it")
    cues: list[str] = Field(default_factory=list, description="short-answer cues; default 「単語や短い語句で…」")

    @field_validator("requires")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"requires is not a valid regex: {exc}") from None
        return v


def bundled_categories() -> list[Category]:
    """The bank in data/categories.yaml (MM-Instruct's task types and the short-answer kinds)."""
    return [Category.model_validate(row) for row in data.load("categories.yaml")]


DEFAULT_CATEGORIES = bundled_categories()


def bundled_multi_image_categories() -> list[Category]:
    """Questions that need 2-4 images at once (data/multi_image_categories.yaml)."""
    return [Category.model_validate(row) for row in data.load("multi_image_categories.yaml")]
VERDICT_OK, VERDICT_BAD = "一致", "矛盾"


class Params(ImageInputParams):
    caption_column: str = Field(
        "captions_ja.detailed",
        description="column with the detailed Japanese caption ('a.b' reads key b of struct column a); "
                    "the default reads a caption-translate output folder")
    categories: list[Category] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES), min_length=1,
                                       description="the category bank (default: generators/data/categories.yaml)")
    categories_file: Annotated[str | None, InputSource()] = Field(
        None, description="a YAML/JSON list of categories replacing `categories`")
    questions_per_image: int = Field(2, ge=1, le=64, description="distinct categories dealt to each image")
    personas: str | None = Field("builtin", description="who asks: 'builtin', a persona file or Hub id; null for nobody")
    persona_limit: int | None = Field(None, ge=1)
    difficulties: DifficultyLevels = Field(default_factory=lambda: difficulties("image"), min_length=1,
                                           description="difficulty levels drawn per question")
    min_turns: int = Field(1, ge=1, le=4, description="turns per record drawn between min_turns and max_turns")
    max_turns: int = Field(1, ge=1, le=4, description="2-4: later questions build on the earlier answers")
    max_short_answer_chars: int = Field(80, ge=5, description="short-answer categories: longer answers are dropped")
    multi_image_chance: float = Field(0.0, ge=0, le=1, description="share of records made of 2-4 images with "
                                                                   "a question that needs all of them (`images`)")
    images_per_record: tuple[int, int] = Field((2, 3), description="multi-image records: fewest and most images")
    multi_image_categories: list[Category] = Field(default_factory=bundled_multi_image_categories, min_length=1,
                                                   description="categories for multi-image records")
    check_consistency: bool = Field(True, description="ask the judge role whether each answer contradicts the caption")
    min_caption_chars: int = Field(20, ge=1)
    min_answer_chars: int = Field(10, ge=1)
    max_question_chars: int = Field(400, ge=10)
    japanese_min_ratio: float = Field(0.3, ge=0, le=1)

    @field_validator("categories")
    @classmethod
    def _unique(cls, v: list[Category]) -> list[Category]:
        return unique_names(v, "category")

    @model_validator(mode="after")
    def _file_and_turns(self) -> Params:
        if self.categories_file is not None:
            rows = data.load_file(self.categories_file)
            if not isinstance(rows, list) or not rows:
                raise ValueError(f"categories_file {self.categories_file}: expected a non-empty list of categories")
            self.categories = unique_names([Category.model_validate(r) for r in rows], "category")
            self.categories_file = None  # the bank is now in the params (and so in the manifest)
        if self.min_turns > self.max_turns:
            raise ValueError("min_turns must be <= max_turns")
        low, high = self.images_per_record
        if not 2 <= low <= high <= 4:
            raise ValueError("images_per_record must be (low, high) with 2 <= low <= high <= 4")
        unique_names(self.multi_image_categories, "multi-image category")
        return self


def features(_params: Params) -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "image_sha256": datasets.Value("string"),
        # Multi-image records: `image` is empty and the pictures are here, in the order the
        # first user turn's `<image>` placeholders refer to them (1枚目, 2枚目, ...).
        "images": [datasets.Image()],
        "images_sha256": [datasets.Value("string")],
        "category": datasets.Value("string"),
        "difficulty": datasets.Value("string"),
        "persona": datasets.Value("string"),
        "persona_id": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "caption": datasets.Value("string"),
        "source": datasets.Value("string"),
        "models": {"writer": datasets.Value("string"), "judge": datasets.Value("string")},
    })


class Dealer:
    """Deals categories so their counts track the weights: each pick goes to the eligible
    category furthest behind its share (count / weight smallest), ties broken by a seeded RNG.
    Deterministic for a seed, so record keys are stable; exact balance, not a lottery."""

    def __init__(self, categories: list[Category], seed: int) -> None:
        self._cats = categories
        self._patterns = {c.name: re.compile(c.requires) if c.requires else None for c in categories}
        self._counts = dict.fromkeys((c.name for c in categories), 0)
        self._rng = random.Random(seed)

    def deal(self, caption: str, k: int) -> list[Category]:
        eligible = [c for c in self._cats if (pat := self._patterns[c.name]) is None or pat.search(caption)]
        chosen: list[Category] = []
        for _ in range(min(k, len(eligible))):
            left = [c for c in eligible if c not in chosen]
            best = min(left, key=lambda c: ((self._counts[c.name] + 1) / c.weight, self._rng.random()))
            self._counts[best.name] += 1
            chosen.append(best)
        return chosen


def inputs(ctx: InputContext[Params]) -> Iterator[dict[str, Any]]:
    """One item per (image, category): an image's reference and caption, dealt k categories."""
    p = ctx.params
    dealer = Dealer(p.categories, ctx.seed)
    multi = Dealer(p.multi_image_categories, ctx.seed + 2)
    personas = _personas(p)
    rng = random.Random(ctx.seed + 1)
    group: list[dict[str, Any]] = []
    group_size = 0
    for item in iter_items(p, {"caption": p.caption_column}):
        caption = item.get("caption")
        caption = caption.strip() if isinstance(caption, str) else ""
        item["caption"] = caption
        if group_size or (caption and p.multi_image_chance and rng.random() < p.multi_image_chance):
            # this image (and the next few with a caption) make one multi-image record
            group_size = group_size or rng.randint(*p.images_per_record)
            if caption:
                group.append(item)
            if len(group) == group_size:
                joined = "\n".join(g["caption"] for g in group)
                category = multi.deal(joined, 1)
                who = asker(rng.choice(personas), rng) if personas else None
                yield {"group": group, "caption": joined, "category": category[0].name if category else None,
                       "difficulty": draw(p.difficulties, rng).name,
                       "persona_id": who.id if who else "", "persona": who.shown if who else ""}
                group, group_size = [], 0
            continue
        dealt = dealer.deal(caption, p.questions_per_image) if caption else []
        if not dealt:  # no caption, or no category fits it: one item that fails with the reason
            yield {**item, "category": None}
            continue
        for category in dealt:
            who = asker(rng.choice(personas), rng) if personas else None
            yield {**item, "category": category.name, "difficulty": draw(p.difficulties, rng).name,
                   "persona_id": who.id if who else "", "persona": who.shown if who else ""}


def _personas(p: Params) -> list[Any]:
    if not p.personas:
        return []
    from synthgen.personas.loaders import load_personas

    found = load_personas(p.personas, limit=p.persona_limit)
    if not found:
        raise ValueError("the persona source yielded no personas")
    return found


def resources(params: Params) -> AbstractAsyncContextManager[Downloader]:
    return open_downloader(params.download_limits())


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    if "group" in item:
        return await _multi_image(item, ctx)
    p = ctx.params
    caption = item["caption"]
    if len(caption) < p.min_caption_chars:
        raise Skip("caption_missing" if not caption else "caption_too_short", caption[:200])
    if item["category"] is None:
        raise Skip("no_category_fits", caption[:200])
    category = by_name(p.categories, item["category"])
    level = by_name(p.difficulties, item.get("difficulty") or p.difficulties[0].name)
    img = await load_image(item, p, ctx.resources)
    writer, judge = ctx.role("writer"), ctx.role("judge")
    turns = ctx.rng.randint(p.min_turns, p.max_turns)
    persona = item.get("persona", "")

    history: list[tuple[str, str]] = []  # (question as asked, answer)
    messages: list[dict[str, Any]] = []
    for turn in range(1, turns + 1):
        if turn == 1:
            ask = ctx.prompts.render("question", caption=caption, category=category, persona=persona,
                                     difficulty=level)
            question = _question(await writer.chat([user(ask)]), p, category)
            shown = f"{question}\n{_cue(category, ctx)}" if category.answer == "short" else question
            answer_as: Category | None = category
        else:
            ask = ctx.prompts.render("followup", caption=caption, history=history, persona=persona)
            question = _question(await writer.chat([user(ask)]), p, None)
            if any(question == q for q, _ in history):
                raise Skip("followup_repeats", question[:200])
            shown, answer_as = question, None
        reply = await writer.chat([user(ctx.prompts.render(
            "answer", caption=caption, question=question, category=answer_as, history=history))])
        answer = _answer(reply, p, answer_as, caption)
        if p.check_consistency:
            verdict = await judge.chat([user(ctx.prompts.render("verify", caption=caption, question=question,
                                                                answer=answer))], temperature=0.0)
            _consistent(verdict.text, answer)
        history.append((question, answer))
        messages += [user(f"<image>\n{shown}" if turn == 1 else shown), assistant(answer)]

    return [{
        "image": img.cell(), "image_sha256": img.sha256, "images": [], "images_sha256": [],
        "category": category.name, "difficulty": level.name,
        "persona": persona, "persona_id": item.get("persona_id", ""),
        "messages": messages, "caption": caption, "source": describe(item, p.source),
        "models": {"writer": writer.model, "judge": judge.model if p.check_consistency else ""},
    }]


async def _multi_image(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    """2-4 images, each known by its caption as 画像1..N; one question that needs them all."""
    p = ctx.params
    if item["category"] is None:
        raise Skip("no_category_fits", "multi-image group")
    category = by_name(p.multi_image_categories, item["category"])
    level = by_name(p.difficulties, item["difficulty"])
    captions = [g["caption"] for g in item["group"]]
    if any(len(c) < p.min_caption_chars for c in captions):
        raise Skip("caption_too_short", "multi-image group")
    images = [await load_image(g, p, ctx.resources) for g in item["group"]]
    writer, judge = ctx.role("writer"), ctx.role("judge")
    ask = ctx.prompts.render("multi_question", captions=captions, category=category, persona=item["persona"],
                             difficulty=level)
    question = _question(await writer.chat([user(ask)]), p, category)
    reply = await writer.chat([user(ctx.prompts.render("multi_answer", captions=captions, question=question,
                                                       category=category))])
    joined = "\n".join(captions)
    answer = _answer(reply, p, category, joined)
    if p.check_consistency:
        verdict = await judge.chat([user(ctx.prompts.render("verify", caption=_numbered(captions), question=question,
                                                            answer=answer))], temperature=0.0)
        _consistent(verdict.text, answer)
    shown = f"{question}\n{_cue(category, ctx)}" if category.answer == "short" else question
    placeholders = "\n".join("<image>" for _ in images)
    return [{
        "image": None, "image_sha256": "", "images": [img.cell() for img in images],
        "images_sha256": [img.sha256 for img in images], "category": category.name, "difficulty": level.name,
        "persona": item["persona"], "persona_id": item["persona_id"],
        "messages": [user(f"{placeholders}\n{shown}"), assistant(answer)], "caption": _numbered(captions),
        "source": " | ".join(describe(g, p.source) for g in item["group"]),
        "models": {"writer": writer.model, "judge": judge.model if p.check_consistency else ""},
    }]


def _numbered(captions: list[str]) -> str:
    return "\n".join(f"画像{i}：{c}" for i, c in enumerate(captions, 1))


def _cue(category: Category, ctx: RecordContext[Params]) -> str:
    return ctx.rng.choice(category.cues or DEFAULT_SHORT_CUES)


def _question(result: ChatResult, p: Params, category: Category | None) -> str:
    text = strip_label(result.text)
    if not text:
        raise Skip("empty_question")
    if "該当なし" in text[:20]:
        raise Skip("category_not_applicable", text[:200])
    if result.finish_reason == "length" or len(text) > p.max_question_chars:
        raise Skip("question_too_long", text[:300])
    if category is not None and category.phrasing == "request" and not _REQUEST.search(text):
        raise Skip("not_a_request", text[:300])
    return _japanese_without_caption(text, "question", p)


def _answer(result: ChatResult, p: Params, category: Category | None, caption: str) -> str:
    text = strip_label(result.text)
    if is_refusal(text):
        raise Skip("answer_refusal", text[:300])
    short = category is not None and category.answer == "short"
    if not short and len(text) < p.min_answer_chars:
        raise Skip("answer_too_short", repr(text))
    if not text:
        raise Skip("answer_too_short", "''")
    if result.finish_reason == "length":
        raise Skip("truncated_answer", text[-200:])
    if not short or _KANA_OR_KANJI.search(text):  # a bare number or Latin word is a fine short answer
        text = _japanese_without_caption(text, "answer", p)
    if short and len(text) > p.max_short_answer_chars:
        raise Skip("short_answer_too_long", f"{len(text)} chars: {text[:200]}")
    if category is not None and category.check == "number_first" and not _NUMBER_FIRST.search(text):
        raise Skip("count_not_first", text[:200])
    if category is not None and category.check == "verbatim":
        quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(caption)]
        if quoted and not any(q in text for q in quoted):
            raise Skip("text_not_verbatim", f"caption quotes {quoted[:3]}; answer: {text[:200]}")
    return text


def _japanese_without_caption(text: str, what: str, p: Params) -> str:
    """Shared by questions and answers: Japanese, and never giving away that a caption was read."""
    if not is_japanese(text, p.japanese_min_ratio):
        raise Skip(f"{what}_not_japanese", text[:300])
    if mentions_caption(text):
        raise Skip(f"{what}_mentions_caption", text[:300])
    return text


def _consistent(verdict: str, answer: str) -> None:
    first = verdict.strip().splitlines()[0] if verdict.strip() else ""
    if VERDICT_BAD in first:
        raise Skip("answer_contradicts_caption", answer[:300])
    if VERDICT_OK not in first:
        raise Skip("consistency_unclear", f"judge said: {verdict[:200]}")


generator = Generator[Params](
    name="category-recaption",
    version="2",
    description="Questions and requests of 37 data-file categories (short and long-form) about each image, "
                "asked by a persona at a difficulty, 1-4 turns, answered from its detailed caption",
    params_model=Params,
    roles=("writer", "judge"),
    reads="images with a detailed caption: a caption-translate output folder, or a table/Hub dataset with a caption column",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="category_recaption",
    resources=resources,
)
