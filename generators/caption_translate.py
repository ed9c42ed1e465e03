"""caption-translate: a VLM captions each image in several styles, an LLM turns each into Japanese.

The recipe of the seeds' Tanuki-vision data: VLMs describe best in English, Japanese LLMs
write the better Japanese. Per record, the style captions are requested at once (so a vLLM
server batches them) and each caption's translation starts the moment that caption is
back, so with the VLM and the LLM on different servers both stay busy.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, TypeVar

import datasets
from pydantic import Field, field_validator, model_validator

from synthgen.engine.messages import ChatResult, assistant, image_part, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip
from synthgen.engine.prompts import Prompts
from synthgen.generators.images.checks import is_refusal, length_ratio, strip_translation_label
from synthgen.generators.images.download import Downloader, open_downloader
from synthgen.generators.images.sources import ImageInputParams, describe, iter_items, load_image
from synthgen.generators.textcheck import is_japanese

Style = Literal["short", "detailed", "dense"]
STYLE_LABELS = {"short": "短いキャプション", "detailed": "詳しい説明文", "dense": "物体・文字・位置関係を細かく書いた説明文"}
# Sensible translated/original length (characters) by caption language: English->Japanese
# shrinks to roughly a third to a half; Japanese->Japanese polishing stays near 1.
DEFAULT_RATIOS = {"en": (0.12, 1.5), "ja": (0.5, 2.0)}
T = TypeVar("T")


class Params(ImageInputParams):
    styles: list[Style] = Field(default_factory=lambda: ["short", "detailed", "dense"], min_length=1,
                                description="caption styles the VLM writes for every image")
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
        return self

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
    yield from iter_items(ctx.params)


def resources(params: Params) -> AbstractAsyncContextManager[Downloader]:
    return open_downloader(params.download_limits())


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    p = ctx.params
    img = await load_image(item, p, ctx.resources)
    picture = image_part(img.data)
    done = await first_failure_cancels([_style(style, picture, p, ctx) for style in p.styles])
    captions = {style: src for style, src, _ in done}
    captions_ja = {style: ja for style, _, ja in done}
    return [{
        "image": img.cell(),
        "image_sha256": img.sha256, "width": img.width, "height": img.height,
        "source": describe(item, p.source), "caption_language": p.caption_language,
        "captions": captions, "captions_ja": captions_ja,
        "messages": _conversation(captions_ja, p, ctx),
        "models": {"vlm": ctx.role("vlm").model, "translator": ctx.role("translator").model},
    }]


async def _style(style: str, picture: dict[str, Any], p: Params, ctx: RecordContext[Params]) -> tuple[str, str, str]:
    """Caption one style, then translate it at once: no wait for the record's other styles."""
    prompt = _static(ctx.prompts, "caption", style, p.caption_language)
    caption = _check_caption(await ctx.role("vlm").chat([user([picture, {"type": "text", "text": prompt}])]),
                             style, p)
    if p.caption_language == "ja" and not p.polish_japanese:
        return style, caption, caption
    template = "translate" if p.caption_language == "en" else "polish"
    ask = ctx.prompts.render(template, caption=caption, style_label=STYLE_LABELS[style])
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
    return text


def _check_translation(result: ChatResult, source: str, style: str, p: Params) -> str:
    text = _usable(strip_translation_label(result.text), result, "translation", style)
    if not is_japanese(text, p.japanese_min_ratio):
        raise Skip("translation_not_japanese", f"{style}: {text[:300]}")
    low, high = p.ratio_bounds()
    ratio = length_ratio(source, text)
    if not low <= ratio <= high:
        raise Skip("translation_length_ratio", f"{style}: {ratio:.2f} not in [{low}, {high}]: {text[:200]}")
    return text


def _conversation(captions_ja: dict[str, str], p: Params, ctx: RecordContext[Params]) -> list[dict[str, str]]:
    """`<image>` and a varied Japanese instruction per turn, answered by the Japanese caption."""
    styles = list(p.styles)
    if p.conversation == "one":
        styles = [ctx.rng.choice(styles)]
    else:
        ctx.rng.shuffle(styles)
    turns: list[dict[str, str]] = []
    for i, style in enumerate(styles):
        instruction = ctx.rng.choice(_static(ctx.prompts, "instructions", style, "").splitlines())
        turns.append(user(f"<image>\n{instruction}" if i == 0 else instruction))
        turns.append(assistant(captions_ja[style]))
    return turns


@functools.lru_cache(maxsize=256)
def _static(prompts: Prompts, name: str, style: str, language: str) -> str:
    """Templates that depend only on the style render once per run, not once per record."""
    text = prompts.render(name, style=style, language=language)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip()) if name == "instructions" else text


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
    version="1",
    description="VLM captions in several styles (short, detailed, dense), translated into Japanese by an LLM",
    params_model=Params,
    roles=("vlm", "translator"),
    reads="images: a local folder, a parquet/jsonl of paths/bytes/URLs, a saved dataset or a Hub dataset (hf:...)",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="caption_translate",
    resources=resources,
)
