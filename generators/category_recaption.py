"""category-recaption: questions of many categories about each image, answered from its caption.

The seeds' second image recipe: a VLM alone answered monotonously, so a Japanese LLM read
each image's detailed caption, asked a question of a given category (description,
reasoning, counting, OCR, ...) and answered it "as if it saw the image". Categories are
dealt to images in inputs, balanced to their weights, so each record is one question and a
dropped one is counted with its reason. Answers that cite the caption, or that a check
finds contradict it, are dropped: a VLM trained on them would learn to quote text it never sees.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import datasets
from pydantic import BaseModel, Field, field_validator

from synthgen.engine.messages import ChatResult, assistant, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip, unique_names
from synthgen.generators.images.checks import is_refusal, mentions_caption
from synthgen.generators.images.download import Downloader, open_downloader
from synthgen.generators.images.sources import ImageInputParams, describe, iter_items, load_image
from synthgen.generators.textcheck import is_japanese, strip_label


class Category(BaseModel):
    name: str = Field(..., pattern=r"^[a-z0-9_-]+$")
    label: str
    instruction: str
    weight: float = Field(1.0, gt=0)
    requires: str | None = Field(None, description="regex the caption must match for this category to be dealt")

    @field_validator("requires")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"requires is not a valid regex: {exc}") from None
        return v


# MM-Instruct's families of instructions, and the OCR/counting ones Japanese VLMs most lack.
DEFAULT_CATEGORIES = [
    Category(name="description", label="内容の説明", instruction="画像の全体や一部の様子を説明してもらう質問にすること。"),
    Category(name="reasoning", label="推論",
             instruction="写っているものから状況・原因・この後の展開などを推し量る質問にすること。"),
    Category(name="creative_writing", label="創作",
             instruction="画像を題材に短い物語・詩・キャッチコピーなどを書いてもらう依頼にすること。"),
    Category(name="comparison", label="比較",
             instruction="画像の中の二つ以上のものの違いや共通点を比べる質問にすること。"),
    Category(name="advice", label="助言",
             instruction="画像の場面にいる人や画像を見た人が役立てられる助言を求める質問にすること。"),
    Category(name="information_extraction", label="情報の抽出",
             instruction="画像から特定の情報(色、種類、場所、状態など)を取り出して答えてもらう質問にすること。"),
    Category(name="counting", label="数を数える",
             instruction="画像の中の物の数を数える質問にすること。答えが画像の内容から一つに決まるものにすること。"),
    Category(name="ocr", label="文字の読み取り",
             instruction="画像の中に書かれた文字を読み取る質問にすること。",
             requires=r"文字|書かれ|「|ロゴ|看板|ラベル|表示|テキスト|\""),
]
VERDICT_OK, VERDICT_BAD = "一致", "矛盾"


class Params(ImageInputParams):
    caption_column: str = Field(
        "captions_ja.detailed",
        description="column with the detailed Japanese caption ('a.b' reads key b of struct column a); "
                    "the default reads a caption-translate output folder")
    categories: list[Category] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES), min_length=1)
    questions_per_image: int = Field(2, ge=1, le=16, description="distinct categories dealt to each image")
    check_consistency: bool = Field(True, description="ask the judge role whether each answer contradicts the caption")
    min_caption_chars: int = Field(20, ge=1)
    min_answer_chars: int = Field(10, ge=1)
    max_question_chars: int = Field(400, ge=10)
    japanese_min_ratio: float = Field(0.3, ge=0, le=1)

    @field_validator("categories")
    @classmethod
    def _unique(cls, v: list[Category]) -> list[Category]:
        return unique_names(v, "category")


def features(_params: Params) -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "image_sha256": datasets.Value("string"),
        "category": datasets.Value("string"),
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
    for item in iter_items(p, {"caption": p.caption_column}):
        caption = item.get("caption")
        caption = caption.strip() if isinstance(caption, str) else ""
        item["caption"] = caption
        dealt = dealer.deal(caption, p.questions_per_image) if caption else []
        if not dealt:  # no caption, or no category fits it: one item that fails with the reason
            yield {**item, "category": None}
            continue
        for category in dealt:
            yield {**item, "category": category.name}


def resources(params: Params) -> AbstractAsyncContextManager[Downloader]:
    return open_downloader(params.download_limits())


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    p = ctx.params
    caption = item["caption"]
    if len(caption) < p.min_caption_chars:
        raise Skip("caption_missing" if not caption else "caption_too_short", caption[:200])
    if item["category"] is None:
        raise Skip("no_category_fits", caption[:200])
    category = next(c for c in p.categories if c.name == item["category"])
    img = await load_image(item, p, ctx.resources)
    writer = ctx.role("writer")

    ask = ctx.prompts.render("question", caption=caption, category=category)
    question = _question(await writer.chat([user(ask)]), p)
    answer = _answer(await writer.chat([user(ctx.prompts.render("answer", caption=caption, question=question))]), p)
    judge = ctx.role("judge")
    if p.check_consistency:
        verdict = await judge.chat([user(ctx.prompts.render("verify", caption=caption, question=question,
                                                            answer=answer))], temperature=0.0)
        _consistent(verdict.text, answer)

    return [{
        "image": img.cell(), "image_sha256": img.sha256, "category": category.name,
        "messages": [user(f"<image>\n{question}"), assistant(answer)],
        "caption": caption, "source": describe(item, p.source),
        "models": {"writer": writer.model, "judge": judge.model if p.check_consistency else ""},
    }]


def _question(result: ChatResult, p: Params) -> str:
    text = strip_label(result.text)
    if not text:
        raise Skip("empty_question")
    if "該当なし" in text[:20]:
        raise Skip("category_not_applicable", text[:200])
    if result.finish_reason == "length" or len(text) > p.max_question_chars:
        raise Skip("question_too_long", text[:300])
    return _japanese_without_caption(text, "question", p)


def _answer(result: ChatResult, p: Params) -> str:
    text = strip_label(result.text)
    if is_refusal(text):
        raise Skip("answer_refusal", text[:300])
    if len(text) < p.min_answer_chars:
        raise Skip("answer_too_short", repr(text))
    if result.finish_reason == "length":
        raise Skip("truncated_answer", text[-200:])
    return _japanese_without_caption(text, "answer", p)


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
    version="1",
    description="Questions of configurable categories about each image, answered from its detailed caption",
    params_model=Params,
    roles=("writer", "judge"),
    reads="images with a detailed caption: a caption-translate output folder, or a table/Hub dataset with a caption column",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="category_recaption",
    resources=resources,
)
