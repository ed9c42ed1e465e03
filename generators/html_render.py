"""html-render: Japanese text drawn as web pages, with ground truth taken from the page itself.

Recipe: cut a passage from a text source -> draw a layout, viewport, font, size, palette
and background from the record's RNG -> the writer writes an HTML page presenting the
passage, and (at the same time) Q&A whose answers are spans of the passage -> sanitise the
page and draw it in the sandboxed browser pool -> the "read all the text" target is the
browser's own innerText, and a Q&A pair is kept only when its answer is both in the passage
and in that visible text. No model ever looks at the picture to make the labels.

Document layouts (a multi-page-like report, a table with merged cells, an invoice, a
timetable) are model-written pages like the others, checked for the structure they promise
(rowspan/colspan, page blocks). Chart layouts (bar, line, pie) are drawn by us as SVG from a
generated table (generators/render/charts.py), with questions whose answers are computed from
that table. Pages are set in Japanese typefaces from Debian's font packages
(generators/data/fonts.yaml), and a share of pictures can be photographically degraded
(perspective, blur, JPEG noise, shadow; generators/render/degrade.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import subprocess
import unicodedata
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import datasets
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synthgen.engine.messages import ChatResult, assistant, user
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip
from synthgen.generators import data
from synthgen.generators.render import RenderError, RenderOptions, charts, open_renderer
from synthgen.generators.render.checks import Limits, problems
from synthgen.generators.render.degrade import EFFECTS, Effect, degrade, draw_effects
from synthgen.generators.render.sandbox import UnsafeHtml, sanitize
from synthgen.policy import SERVER_SETTING, InputSource

TEXT_LAYOUTS = ("article", "table", "slide", "poster", "menu", "receipt", "signboard", "form", "chat",
                "multicolumn", "vertical")
DOCUMENT_LAYOUTS = ("report", "merged_table", "invoice", "timetable")
CHART_LAYOUTS = ("bar_chart", "line_chart", "pie_chart")
LAYOUTS = TEXT_LAYOUTS + DOCUMENT_LAYOUTS + CHART_LAYOUTS
# What a document layout promises, checked on the sanitised page (a model may ignore the brief).
_STRUCTURE = {  # layout -> (pattern, how many matches at least, what was promised)
    "merged_table": (re.compile(r"\b(?:rowspan|colspan)=[\"']?(?:[2-9]|\d{2,})"), 1, "a cell spanning rows or columns"),
    "report": (re.compile(r"class=[\"'][^\"']*\bpage\b"), 2, "two page blocks"),
    "invoice": (re.compile(r"<table\b"), 1, "a table of items"),
    "timetable": (re.compile(r"<table\b"), 1, "a table"),
}
GENERIC_FONTS = ("sans-serif", "serif", "monospace")
FONT_SIZES = (14, 16, 18, 20, 22, 24, 28, 32)
# (text, background, accent): each pair chosen for contrast well above WCAG AA.
PALETTES = (
    ("#222222", "#ffffff", "#c0392b"), ("#1b2a49", "#f4f1ea", "#d35400"), ("#ffffff", "#1e1e1e", "#f1c40f"),
    ("#2d3436", "#fdf6e3", "#0984e3"), ("#fefefe", "#8e1b1b", "#ffd166"), ("#102a43", "#e3f2fd", "#2a9d8f"),
    ("#3e2723", "#fff8e1", "#6d4c41"), ("#f5f5f5", "#263238", "#80cbc4"), ("#1a1a1a", "#fce4ec", "#ad1457"),
    ("#0b3d2e", "#eef7f0", "#e76f51"),
)
BACKGROUNDS = (
    "無地の背景色", "上から下へのゆるやかなグラデーション", "斜めの細いストライプ模様（repeating-linear-gradient）",
    "和紙のような淡い地の色に細い枠線", "中央に白っぽいカードを置き、周りを背景色にする", "格子模様（方眼紙風）",
)
_FENCE = re.compile(r"```(?:html|HTML)?\s*\n(.*?)(?:```|$)", re.DOTALL)
_DOC = re.compile(r"(<!DOCTYPE html.*?</html>|<html.*?</html>)", re.DOTALL | re.IGNORECASE)
_SPACE = re.compile(r"\s+")


class Viewport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(..., ge=200, le=4096)
    height: int = Field(..., ge=200, le=4096)
    weight: float = Field(1.0, gt=0)


DEFAULT_VIEWPORTS = [Viewport(width=w, height=h, weight=wt) for w, h, wt in (
    (1024, 768, 3), (800, 600, 2), (1280, 720, 2), (768, 1024, 2), (600, 800, 1), (1080, 1080, 1), (480, 854, 1))]


class Params(BaseModel):
    """Parameters of html-render. `source` is the only one without a default."""

    model_config = ConfigDict(extra="forbid")

    source: Annotated[str, InputSource()] = Field(
        ..., description="local .jsonl/.json/.parquet/.csv/.txt file or folder, or a Hub dataset id")
    column: str = Field("text", description="column holding the text")
    split: str = "train"
    subset: str | None = Field(None, description="Hub dataset configuration name")
    skip_rows: int = Field(0, ge=0)
    max_rows: int | None = Field(None, ge=1)
    passage_chars: int = Field(200, ge=20, le=4000, description="target passage length in characters")
    min_passage_chars: int = Field(40, ge=1)
    max_passage_chars: int = Field(400, ge=20, le=8000)
    layouts: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(LAYOUTS, 1.0),
                                      description=f"layout -> weight; layouts: {', '.join(LAYOUTS)}")
    viewports: list[Viewport] = Field(default_factory=lambda: list(DEFAULT_VIEWPORTS), min_length=1)
    full_page: bool = Field(True, description="grow the picture to the page (up to max_*), else clip to the viewport")
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(85, ge=30, le=100)
    max_width: int = Field(2048, ge=200, le=8192)
    max_height: int = Field(3072, ge=200, le=16384)
    backend: Literal["pool", "html2image"] = "pool"
    pool_pages: int = Field(4, ge=1, le=64, description="browser pages drawing at once")
    render_timeout_s: float = Field(15.0, gt=0, le=300)
    chromium: Annotated[str, SERVER_SETTING] = Field(
        "/usr/bin/chromium", description="the Chromium executable (Debian's, not a download); CLI only")
    qa_pairs: int = Field(3, ge=1, le=10, description="Q&A pairs asked of the writer")
    min_qa: int = Field(1, ge=0, le=10, description="records with fewer visible answers are dropped")
    min_visible_chars: int = Field(20, ge=1)
    min_passage_shown: float = Field(0.6, ge=0, le=1, description="share of the passage's sentences the page must show")
    html_max_tokens: int | None = Field(4096, ge=256, description="max_tokens of the HTML request")
    font_kinds: list[str] = Field(default_factory=lambda: list(data.load("fonts.yaml")),
                                  description="kinds of typeface drawn from data/fonts.yaml "
                                              "(gothic, mincho, rounded, handwriting, brush, monospace)")
    degrade_chance: float = Field(0.0, ge=0, le=1, description="share of pictures given photographic degradations")
    degradations: list[Effect] = Field(default_factory=lambda: list(EFFECTS),
                                       description="effects degrade_chance draws from (one or two per picture)")
    value_label_chance: float = Field(0.7, ge=0, le=1, description="charts that print their values (else only "
                                                                    "ranking and comparison questions)")
    multi_chart_chance: float = Field(0.0, ge=0, le=1, description="share of chart records made of two charts of "
                                                                   "one topic (`images`), asked questions that need both")

    @field_validator("layouts")
    @classmethod
    def _known_layouts(cls, layouts: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(layouts) - set(LAYOUTS))
        if unknown:
            raise ValueError(f"unknown layouts {unknown}; known: {', '.join(LAYOUTS)}")
        if not any(w > 0 for w in layouts.values()) or any(w < 0 for w in layouts.values()):
            raise ValueError("layout weights must be >= 0 with at least one > 0")
        return layouts

    @field_validator("font_kinds")
    @classmethod
    def _known_font_kinds(cls, kinds: list[str]) -> list[str]:
        known = list(data.load("fonts.yaml"))
        unknown = sorted(set(kinds) - set(known))
        if unknown or not kinds:
            raise ValueError(f"font_kinds must name some of {', '.join(known)}; unknown: {unknown}")
        return kinds

    @model_validator(mode="after")
    def _lengths(self) -> Params:
        if not self.min_passage_chars <= self.passage_chars <= self.max_passage_chars:
            raise ValueError("need min_passage_chars <= passage_chars <= max_passage_chars")
        return self


CHART_FEATURE = {"kind": datasets.Value("string"), "title": datasets.Value("string"),
                 "unit": datasets.Value("string"), "labels": [datasets.Value("string")],
                 "values": [datasets.Value("float64")], "decimals": datasets.Value("int32")}


def features(_params: Params) -> datasets.Features:
    text = datasets.Value("string")
    return datasets.Features({
        "image": datasets.Image(),
        "html": text,
        "layout": text,
        "source_text": text,
        "visible_text": text,
        "messages": [{"role": text, "content": text}],
        "qa": [{"question": text, "answer": text}],
        "style": {"font": text, "font_size": datasets.Value("int32"), "text_color": text,
                  "background_color": text, "accent_color": text, "background": text},
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "source_ref": text,
        "model": text,
        "chart": CHART_FEATURE,
        # Two-chart records: `image` is empty and both pictures are here, in the order of the
        # first user turn's `<image>` placeholders (1枚目, 2枚目); `charts` holds their tables.
        "images": [datasets.Image()],
        "charts": [CHART_FEATURE],
        "degradations": [text],
    })


def inputs(ctx: InputContext[Params]) -> Iterator[dict[str, Any]]:
    from synthgen.generators.text_sources import iter_passages

    p = ctx.params
    for index, item in enumerate(iter_passages(
            p.source, column=p.column, split=p.split, config=p.subset, target_chars=p.passage_chars,
            min_chars=p.min_passage_chars, max_chars=p.max_passage_chars, skip_rows=p.skip_rows,
            max_rows=p.max_rows)):
        yield {"index": index, **item}


@contextlib.asynccontextmanager
async def resources(params: Params) -> AsyncIterator[Any]:
    """One renderer (the browser pool by default) shared by every record of the run."""
    p = params
    async with open_renderer(p.backend, pages=p.pool_pages, timeout_s=p.render_timeout_s,
                             executable=p.chromium) as renderer:
        yield renderer


def normalize(text: str) -> str:
    """For matching spans across layouts: NFKC, no whitespace (tables and 縦書き split lines)."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text))


def extract_html(reply: str) -> str:
    fenced = _FENCE.search(reply)
    if fenced and "<" in fenced.group(1):
        return fenced.group(1).strip()
    doc = _DOC.search(reply)
    if doc:
        return doc.group(1)
    return reply.strip() if "<" in reply and ">" in reply else ""


def parse_qa(reply: str) -> list[dict[str, str]]:
    text = reply.strip()
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        data = orjson.loads(text[start:end + 1])
    except orjson.JSONDecodeError:
        return []
    pairs = []
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict):
            q, a = entry.get("question"), entry.get("answer")
            if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                pairs.append({"question": q.strip(), "answer": a.strip()})
    return pairs


def clean_visible(text: str) -> str:
    """innerText tidied for a target: tabs to spaces, no trailing blanks, one blank line at most."""
    lines = [line.replace("\t", " ").rstrip() for line in text.replace("\r", "").split("\n")]
    out: list[str] = []
    for line in lines:
        if not line.strip() and (not out or not out[-1].strip()):
            continue
        out.append(line.strip())
    return "\n".join(out).strip()


def shown_share(passage: str, visible: str) -> float:
    from synthgen.generators.text_sources import sentences

    parts = [normalize(s) for s in sentences(passage)]
    parts = [s for s in parts if s]
    seen = normalize(visible)
    return sum(1 for s in parts if s in seen) / len(parts) if parts else 0.0


def visible_pairs(pairs: list[dict[str, str]], passage: str, visible: str) -> list[dict[str, str]]:
    """Pairs whose answer is a span of the passage and is drawn on the page."""
    src, seen = normalize(passage), normalize(visible)
    kept, answers = [], set()
    for pair in pairs:
        ans = normalize(pair["answer"])
        if ans and ans in src and ans in seen and ans not in answers and ans not in normalize(pair["question"]):
            kept.append(pair)
            answers.add(ans)
    return kept


@functools.cache
def installed_fonts() -> frozenset[str]:
    """Font families fontconfig knows on this machine (empty when fc-list is missing)."""
    try:
        out = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(name.strip().replace("\\-", "-") for line in out.splitlines() for name in line.split(","))


def font_choices(kinds: list[str]) -> list[str]:
    """The wanted kinds' families that are installed; generic families when none is."""
    return list(_font_choices(tuple(kinds)))


@functools.cache
def _font_choices(kinds: tuple[str, ...]) -> tuple[str, ...]:
    bank = data.load("fonts.yaml")
    have = installed_fonts()
    found = [f for kind in kinds for f in bank.get(kind, []) if f in have]
    return tuple(found) or GENERIC_FONTS


def _style(ctx: RecordContext[Params], p: Params) -> dict[str, Any]:
    rng = ctx.rng
    names = [k for k, w in p.layouts.items() if w > 0]
    layout = rng.choices(names, [p.layouts[k] for k in names])[0]
    viewport = rng.choices(p.viewports, [v.weight for v in p.viewports])[0]
    text, background_color, accent = rng.choice(PALETTES)
    return {"layout": layout, "width": viewport.width, "height": viewport.height,
            "font": rng.choice(font_choices(p.font_kinds)), "font_size": rng.choice(FONT_SIZES), "text_color": text,
            "background_color": background_color, "accent_color": accent,
            "background": rng.choice(BACKGROUNDS), "read_all_variant": rng.randrange(1000),
            "read_all_first": rng.random() < 0.5}


def _page_html(result: ChatResult) -> str:
    if result.finish_reason == "length":
        raise Skip("truncated_html", result.text[-200:])
    html = extract_html(result.text)
    if not html:
        raise Skip("no_html", result.text[:300])
    try:
        return sanitize(html)
    except UnsafeHtml as exc:
        raise Skip("unsafe_html", str(exc)) from None


async def generate(item: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    p = ctx.params
    renderer = ctx.resources
    if renderer is None:
        raise RuntimeError("html-render needs its renderer: run it through the engine (resources)")
    passage, s = item["passage"], _style(ctx, p)
    writer = ctx.role("writer")
    if s["layout"] in CHART_LAYOUTS:
        return await _chart_record(item, s, ctx)
    page_prompt = ctx.prompts.render(
        "page", passage=passage, layout=s["layout"], width=s["width"], height=s["height"],
        max_height=p.max_height, font=s["font"], font_size=s["font_size"], background=s["background"],
        palette={"text": s["text_color"], "background": s["background_color"], "accent": s["accent_color"]})
    qa_prompt = ctx.prompts.render("qa", passage=passage, count=p.qa_pairs)
    page_reply, qa_reply = await asyncio.gather(
        writer.chat([user(page_prompt)], max_tokens=p.html_max_tokens), writer.chat([user(qa_prompt)]))
    document = _page_html(page_reply)
    if s["layout"] in _STRUCTURE:
        pattern, least, promised = _STRUCTURE[s["layout"]]
        if len(pattern.findall(document)) < least:
            raise Skip("layout_not_followed", f"{s['layout']} page without {promised}")

    options = RenderOptions(width=s["width"], height=s["height"], full_page=p.full_page, fmt=p.image_format,
                            quality=p.jpeg_quality, max_width=p.max_width, max_height=p.max_height)
    try:
        shot = await renderer.render(document, options)
    except RenderError as exc:
        raise Skip(exc.reason, exc.detail) from None
    found = await asyncio.to_thread(problems, shot, Limits(min_chars=p.min_visible_chars))
    if found:
        raise Skip(found[0].reason, "; ".join(f"{f.reason}: {f.detail}" for f in found))
    visible = clean_visible(shot.text)
    share = shown_share(passage, visible)
    if share < p.min_passage_shown:
        raise Skip("passage_not_shown", f"{share:.0%} of the passage's sentences are on the page")
    asked = parse_qa(qa_reply.text)
    qa = visible_pairs(asked, passage, visible)
    if len(qa) < p.min_qa:
        raise Skip("qa_not_visible", f"{len(qa)} of {len(asked)} answers are spans shown on the page")

    read_all = ctx.prompts.render("read_all", variant=s["read_all_variant"])
    turns = [(read_all, visible)] + [(q["question"], q["answer"]) for q in qa]
    if not s["read_all_first"] and qa:
        turns = turns[1:] + turns[:1]
    messages = []
    for i, (question, answer) in enumerate(turns):
        messages += [user(f"<image>\n{question}" if i == 0 else question), assistant(answer)]
    effects = draw_effects(ctx.rng, p.degrade_chance, list(p.degradations))
    image = await asyncio.to_thread(degrade, shot.image, effects, ctx.rng, fmt=shot.fmt, quality=p.jpeg_quality)
    return [{
        "image": {"bytes": image, "path": None}, "html": document, "layout": s["layout"],
        "source_text": passage, "visible_text": visible, "messages": messages, "qa": qa,
        "style": {k: s[k] for k in ("font", "font_size", "text_color", "background_color", "accent_color",
                                    "background")},
        "width": shot.width, "height": shot.height, "source_ref": f"{p.source}#row={item['row']}&part={item['part']}",
        "model": writer.model, "chart": NO_CHART, "images": [], "charts": [], "degradations": effects,
    }]


NO_CHART: dict[str, Any] = {"kind": "", "title": "", "unit": "", "labels": [], "values": [], "decimals": 0}
TO_TABLE = ("このグラフの内容を表にまとめてください。", "グラフの数値を項目ごとに表にしてください。",
            "このグラフを読み取って、表の形で書き出してください。")


async def _chart_record(item: dict[str, Any], s: dict[str, Any], ctx: RecordContext[Params]) -> list[dict[str, Any]]:
    """A chart (or two) drawn by us from generated tables; every answer is computed from the tables."""
    p, rng = ctx.params, ctx.rng
    kind = s["layout"].removesuffix("_chart")
    pair = rng.random() < p.multi_chart_chance
    tables = list(charts.make_pair(kind, rng)) if pair else [charts.make_table(kind, rng)]
    colors = list(charts.SERIES_COLORS)
    rng.shuffle(colors)
    cstyle = charts.ChartStyle(value_labels=rng.random() < p.value_label_chance,
                               horizontal=kind == "bar" and rng.random() < 0.3, gridlines=rng.random() < 0.7,
                               colors=colors)
    palette = {"text": s["text_color"], "background": s["background_color"], "accent": s["accent_color"]}
    documents = [charts.page(t, cstyle, font=s["font"], font_size=min(s["font_size"], 22), palette=palette)
                 for t in tables]
    for table, document in zip(tables, documents, strict=True):
        drawn = charts.read_chart(document, kind)
        if len(drawn) != len(table.values) or any(abs(a - b) > 10 ** -table.decimals / 2
                                                  for a, b in zip(drawn, table.values, strict=True)):
            raise Skip("chart_mismatch", f"drawn {drawn} for {table.values}")
    width = max(s["width"], 760)
    options = RenderOptions(width=width, height=max(s["height"], 560), full_page=p.full_page, fmt=p.image_format,
                            quality=p.jpeg_quality, max_width=max(p.max_width, width), max_height=p.max_height)
    shots = []
    for document in documents:
        try:
            shot = await ctx.resources.render(document, options)
        except RenderError as exc:
            raise Skip(exc.reason, exc.detail) from None
        found = await asyncio.to_thread(problems, shot, Limits(min_chars=5))
        if found:
            raise Skip(found[0].reason, "; ".join(f"{f.reason}: {f.detail}" for f in found))
        shots.append(shot)
    if pair:
        qa = charts.pair_questions(tables[0], tables[1], cstyle, rng, p.qa_pairs)
    else:
        qa = charts.questions(tables[0], cstyle, rng, p.qa_pairs)
    turns = [(q["question"], q["answer"]) for q in qa]
    if cstyle.value_labels and not pair:
        turns.insert(rng.randrange(len(turns) + 1), (rng.choice(TO_TABLE), charts.to_markdown(tables[0])))
    placeholders = "\n".join("<image>" for _ in shots)
    messages = []
    for i, (question, answer) in enumerate(turns):
        messages += [user(f"{placeholders}\n{question}" if i == 0 else question), assistant(answer)]
    effects = draw_effects(rng, p.degrade_chance, list(p.degradations))
    images = [await asyncio.to_thread(degrade, shot.image, effects, rng, fmt=shot.fmt, quality=p.jpeg_quality)
              for shot in shots]
    cells = [{"bytes": image, "path": None} for image in images]
    as_dicts = [{**t.as_dict(), "kind": kind} for t in tables]
    return [{
        "image": None if pair else cells[0], "html": "\n<!-- 2枚目 -->\n".join(documents), "layout": s["layout"],
        "source_text": "\n\n".join(charts.to_markdown(t) for t in tables),
        "visible_text": "\n\n".join(clean_visible(shot.text) for shot in shots), "messages": messages,
        "qa": [{"question": q["question"], "answer": q["answer"]} for q in qa],
        "style": {k: s[k] for k in ("font", "font_size", "text_color", "background_color", "accent_color",
                                    "background")},
        "width": shots[0].width, "height": shots[0].height,
        "source_ref": f"{p.source}#row={item['row']}&part={item['part']}",
        "model": "", "chart": as_dicts[0], "images": cells if pair else [], "charts": as_dicts,
        "degradations": effects,
    }]


generator = Generator[Params](
    name="html-render",
    version="2",
    description="Japanese text drawn as web pages (11 layouts), documents (report, merged-cell table, invoice, "
                "timetable) and SVG charts (bar, line, pie) from a generated table, in Debian's Japanese fonts, "
                "optionally photo-degraded; read-all + span Q&A, chart Q&A computed from the table",
    params_model=Params,
    roles=("writer",),
    reads="text: a local jsonl/json/parquet/csv/txt file or folder, or a Hub text dataset (column by param)",
    features=features,
    inputs=inputs,
    generate=generate,
    prompt_dir="html_render",
    resources=resources,
)
