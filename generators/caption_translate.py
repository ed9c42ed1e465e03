"""caption-translate: a VLM captions each image in several styles, an LLM turns each into Japanese.

The recipe of the seeds' Tanuki-vision data: VLMs describe best in English, Japanese LLMs
write the better Japanese. Per record, the style captions are requested at once (so a vLLM
server batches them) and each caption's translation starts the moment that caption is
back, so with the VLM and the LLM on different servers both stay busy.

Styles are data (generators/data/caption_styles.yaml): short, detailed and dense as the seeds
made them, plus "what happens next", atmosphere, alt text and object lists; a job names the
styles it wants, and `styles_per_image` deals a weighted subset to each image instead of all.
Every Japanese caption is in one register, です・ます: a model trained on a mix of plain and
polite captions answers in either at random.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, TypeVar

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synthgen.engine.messages import ChatResult, assistant, image_part, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip
from synthgen.generators import data
from synthgen.generators.banks import Balancer
from synthgen.generators.images.checks import is_refusal, length_ratio, strip_translation_label
from synthgen.generators.images.download import Downloader, open_downloader
from synthgen.generators.images.sources import ImageInputParams, describe, iter_items, load_image
from synthgen.generators.textcheck import is_japanese

# A polite sentence end (です・ます and their past, negative and conjectural forms).
_POLITE_END = re.compile(r"(?:です|ます|でした|ました|ません|でしょう|ください)[。！？」』）)]*$")
_SENTENCE_END = re.compile(r"[。！？]")


class CaptionStyle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9_]+$")
    label: str = Field(..., min_length=1)
    weight: float = Field(1.0, gt=0)
    prompt_en: str = Field(..., min_length=1)
    prompt_ja: str = Field(..., min_length=1)
    instructions: list[str] = Field(..., min_length=1)


def bundled_styles() -> list[CaptionStyle]:
    return [CaptionStyle.model_validate(row) for row in data.load("caption_styles.yaml")]


# Sensible translated/original length (characters) by caption language: English->Japanese
# shrinks to roughly a third to a half; Japanese->Japanese polishing stays near 1.
DEFAULT_RATIOS = {"en": (0.12, 1.5), "ja": (0.5, 2.0)}
T = TypeVar("T")


class Params(ImageInputParams):
    style_bank: list[CaptionStyle] = Field(default_factory=bundled_styles,
                                           description="the styles known (default: generators/data/caption_styles.yaml)")
    styles: list[str] = Field(default_factory=lambda: ["short", "detailed", "dense"], min_length=1,
                              description="styles of the bank to write: all of them per image, or a "
                                          "weighted subset with styles_per_image")
    styles_per_image: int | None = Field(None, ge=1, description="deal this many of `styles` to each image, by weight")
    require_polite: bool = Field(True, description="Japanese captions must end in です・ます (one register)")
    caption_language: Literal["en", "ja"] = Field("en", description="language the VLM writes in (as it does best)")
    polish_japanese: bool = Field(True, description="with caption_language=ja, let the translator polish the Japanese")
    conversation: Literal["all", "one"] = Field(
        "all", description="messages: one turn per style (shuffled) or a single turn with a random style")
    min_caption_chars: int = Field(8, ge=1)
    length_ratio: tuple[float, float] | None = Field(
        None, description="allowed Japanese/original length ratio (default: 0.12-1.5 from English, 0.5-2.0 from Japanese)")
    japanese_min_ratio: float = Field(0.3, ge=0, le=1)

    @field_validator("styles")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"styles must be unique: {v}")
        return v

    @model_validator(mode="after")
    def _ratio_order(self) -> Params:
        if self.length_ratio is not None and not 0 < self.length_ratio[0] < self.length_ratio[1]:
            raise ValueError("length_ratio must be (low, high) with 0 < low < high")
        known = [s.name for s in self.style_bank]
        if len(set(known)) != len(known):
            raise ValueError(f"style_bank names must be unique: {known}")
        unknown = [s for s in self.styles if s not in known]
        if unknown:
            raise ValueError(f"unknown styles {unknown}; the bank has {', '.join(known)}")
        return self

    def style(self, name: str) -> CaptionStyle:
        return next(s for s in self.style_bank if s.name == name)

    def ratio_bounds(self) -> tuple[float, float]:
        return self.length_ratio or DEFAULT_RATIOS[self.caption_language]


def features(p: Params) -> datasets.Features:
    by_style = {s: datasets.Value("string") for s in p.styles}
    return datasets.Features({
        "image": datasets.Image(),
        "image_sha256": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "source": datasets.Value("string"),
        "caption_language": datasets.Value("string"),
        "captions": by_style,
        "captions_ja": dict(by_style),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "models": {"vlm": datasets.Value("string"), "translator": datasets.Value("string")},
    })


def inputs(ctx: InputContext[Params]) -> Iterator[dict[str, Any]]:
    p = ctx.params
    if p.styles_per_image is None:
        yield from iter_items(p)
        return
    balancer = Balancer({name: p.style(name).weight for name in p.styles}, ctx.seed)
    for item in iter_items(p):
        yield {**item, "styles": balancer.deal(p.styles_per_image)}


def resources(params: Params) -> AbstractAsyncContextManager[Downloader]:
    return open_downloader(params.download_limits())


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    p = ctx.params
    img = await load_image(item, p, ctx.resources)
    picture = image_part(img.data)
    wanted = item.get("styles") or p.styles
    done = await first_failure_cancels([_style(style, picture, p, ctx) for style in wanted])
    captions: dict[str, str | None] = dict.fromkeys(p.styles)
    captions_ja: dict[str, str | None] = dict.fromkeys(p.styles)
    for style, src, ja in done:
        captions[style], captions_ja[style] = src, ja
    return [{
        "image": img.cell(),
        "image_sha256": img.sha256, "width": img.width, "height": img.height,
        "source": describe(item, p.source), "caption_language": p.caption_language,
        "captions": captions, "captions_ja": captions_ja,
        "messages": _conversation({s: ja for s, _, ja in done}, p, ctx),
        "models": {"vlm": ctx.role("vlm").model, "translator": ctx.role("translator").model},
    }]


async def _style(style: str, picture: dict[str, Any], p: Params, ctx: RecordContext[Params]) -> tuple[str, str, str]:
    """Caption one style, then translate it at once: no wait for the record's other styles."""
    prompt = ctx.prompts.render("caption", style=p.style(style), language=p.caption_language)
    caption = _check_caption(await ctx.role("vlm").chat([user([picture, {"type": "text", "text": prompt}])]),
                             style, p)
    if p.caption_language == "ja" and not p.polish_japanese:
        return style, caption, caption
    template = "translate" if p.caption_language == "en" else "polish"
    ask = ctx.prompts.render(template, caption=caption, style_label=p.style(style).label)
    japanese = _check_translation(await ctx.role("translator").chat([user(ask)]), caption, style, p)
    return style, caption, japanese


def _usable(text: str, result: ChatResult, what: str, style: str) -> str:
    """The checks a caption and its translation share; reasons are named after `what`."""
    if not text:
        raise Skip(f"empty_{what}", style)
    if is_refusal(text):
        raise Skip(f"{what}_refusal", f"{style}: {text[:300]}")
    if result.finish_reason == "length":
        raise Skip(f"truncated_{what}", f"{style}: {text[-200:]}")
    return text


def _check_caption(result: ChatResult, style: str, p: Params) -> str:
    text = _usable(result.text.strip(), result, "caption", style)
    if len(text) < p.min_caption_chars:
        raise Skip("caption_too_short", f"{style}: {text!r}")
    if p.caption_language == "ja" and not is_japanese(text, p.japanese_min_ratio):
        raise Skip("caption_not_japanese", f"{style}: {text[:300]}")
    if p.caption_language == "ja" and not p.polish_japanese and p.require_polite and not polite(text):
        raise Skip("caption_not_polite", f"{style}: {text[-200:]}")
    return text


def polite(text: str) -> bool:
    """です・ます: the last sentence, and most sentences, end politely (quotes and lists aside)."""
    sentences = [s.strip() + "。" for s in _SENTENCE_END.split(text.strip()) if len(s.strip()) > 3]
    if not sentences:
        return False
    ok = sum(bool(_POLITE_END.search(s)) for s in sentences)
    return bool(_POLITE_END.search(sentences[-1])) and ok * 2 >= len(sentences)


def _check_translation(result: ChatResult, source: str, style: str, p: Params) -> str:
    text = _usable(strip_translation_label(result.text), result, "translation", style)
    if not is_japanese(text, p.japanese_min_ratio):
        raise Skip("translation_not_japanese", f"{style}: {text[:300]}")
    low, high = p.ratio_bounds()
    ratio = length_ratio(source, text)
    if not low <= ratio <= high:
        raise Skip("translation_length_ratio", f"{style}: {ratio:.2f} not in [{low}, {high}]: {text[:200]}")
    if p.require_polite and not polite(text):
        raise Skip("translation_not_polite", f"{style}: {text[-200:]}")
    return text


def _conversation(captions_ja: dict[str, str], p: Params, ctx: RecordContext[Params]) -> list[dict[str, str]]:
    """`<image>` and a varied Japanese instruction per turn, answered by the Japanese caption."""
    styles = [s for s in p.styles if s in captions_ja]
    if p.conversation == "one":
        styles = [ctx.rng.choice(styles)]
    else:
        ctx.rng.shuffle(styles)
    turns: list[dict[str, str]] = []
    for i, style in enumerate(styles):
        lines = ctx.prompts.render("instructions", style=p.style(style)).splitlines()
        instruction = ctx.rng.choice([line.strip() for line in lines if line.strip()])
        turns.append(user(f"<image>\n{instruction}" if i == 0 else instruction))
        turns.append(assistant(captions_ja[style]))
    return turns


async def first_failure_cancels(steps: list[Awaitable[T]]) -> list[T]:
    """Run steps concurrently; the first failure cancels the rest and is raised as itself.

    `asyncio.gather` would leave the siblings of a dropped record running (and spending
    model time); a TaskGroup cancels them but wraps the error, which the runner must see
    bare to count its reason.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(step) for step in steps]  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


generator = Generator[Params](
    name="caption-translate",
    version="2",
    description="VLM captions in styles from a data file (short, detailed, dense, what happens next, atmosphere, "
                "alt text, objects), translated into Japanese in one register (です・ます) by an LLM",
    params_model=Params,
    roles=("vlm", "translator"),
    reads="images: a local folder, a parquet/jsonl of paths/bytes/URLs, a saved dataset or a Hub dataset (hf:...)",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="caption_translate",
    resources=resources,
)
