"""The Chromium page pool: real Japanese text (horizontal and 縦書き), sizes, formats, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time

import pytest
import pytest_asyncio
from PIL import Image, ImageOps

from synthgen.generators.render import Rendered, RenderError, RenderOptions
from synthgen.generators.render.checks import FontCoverage, Limits, installed_fonts, pixel_stddev, problems
from synthgen.generators.render.html2image_backend import Html2ImageRenderer, markup_text
from synthgen.generators.render.pool import BrowserPool, PoolConfig
from synthgen.generators.render.sandbox import sanitize

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HORIZONTAL = sanitize("<style>body{background:#fff;color:#000;font-size:28px}</style>"
                      "<p>吾輩は猫である。名前はまだ無い。</p>")
VERTICAL = sanitize("<style>body{background:#fff;color:#000}"
                    ".v{writing-mode:vertical-rl;font-size:28px;height:600px}</style>"
                    "<div class='v'>吾輩は猫である。</div>")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool():
    async with BrowserPool(PoolConfig(pages=3, timeout_s=10)) as p:
        yield p


def ink_box(rendered: Rendered) -> tuple[int, int, int, int]:
    """Bounding box of the dark pixels: where the text was really drawn."""
    with Image.open(io.BytesIO(rendered.image)) as img:
        grey = ImageOps.invert(img.convert("L")).point(lambda v: 255 if v > 80 else 0)
        box = grey.getbbox()
    assert box is not None, "nothing was drawn"
    return box


async def test_japanese_horizontal_and_vertical(pool):
    flat, upright = await asyncio.gather(
        pool.render(HORIZONTAL, RenderOptions(width=800, height=600)),
        pool.render(VERTICAL, RenderOptions(width=800, height=700)))
    assert flat.text.strip() == "吾輩は猫である。名前はまだ無い。"
    assert upright.text.strip() == "吾輩は猫である。"
    for shot in (flat, upright):
        assert problems(shot, Limits(min_chars=5)) == []
        assert installed_fonts().missing(shot.text) == []
    x0, y0, x1, y1 = ink_box(flat)
    assert (x1 - x0) > 5 * (y1 - y0)          # one wide line
    x0, y0, x1, y1 = ink_box(upright)
    assert (y1 - y0) > 4 * (x1 - x0)          # one tall column: really written top to bottom
    assert y1 - y0 > 8 * 28 * 0.8             # eight glyphs of ~28px stacked


async def test_sizes_formats_full_page_and_clip(pool):
    long_page = sanitize("<style>p{height:300px;margin:0}</style>" + "".join(f"<p>段落{i}</p>" for i in range(8)))
    full = await pool.render(long_page, RenderOptions(width=640, height=480, fmt="png"))
    assert full.image.startswith(b"\x89PNG") and (full.width, full.height) == (640, 2400)
    assert Image.open(io.BytesIO(full.image)).size == (640, 2400) and not full.clipped
    clipped = await pool.render(long_page, RenderOptions(width=640, height=480, full_page=False, fmt="jpeg"))
    assert clipped.image[:2] == b"\xff\xd8" and Image.open(io.BytesIO(clipped.image)).size == (640, 480)
    assert clipped.clipped and clipped.content_height == 2400
    capped = await pool.render(long_page, RenderOptions(width=640, height=480, max_height=1000))
    assert capped.height == 1000 and capped.clipped
    assert [p.reason for p in problems(capped, Limits(min_chars=1))] == ["too_large"]


async def test_vertical_page_is_captured_whole_and_off_page_text_is_caught(pool):
    # A vertical-rl body scrolls to negative x; the whole width is still in the picture.
    column = "縦書きの長い文章です。" * 60
    whole = await pool.render(sanitize(f"<body style='writing-mode:vertical-rl;font-size:24px'>{column}</body>"),
                              RenderOptions(width=800, height=600))
    assert whole.width > 800 and whole.off_page_text == 0 and problems(whole, Limits()) == []
    x0, _y0, x1, _y1 = ink_box(whole)
    assert x0 < 100 and x1 > whole.width - 100  # text from the left edge to the right edge
    hidden = await pool.render(sanitize("<p style='position:absolute;left:-400px;top:-60px'>見えない文</p>"
                                        "<p>画面に見える普通の文章です。画面に見える普通の文章です。</p>"))
    assert "見えない文" in hidden.text and hidden.off_page_text == 1
    assert [p.reason for p in problems(hidden, Limits())] == ["text_off_page"]


async def test_pages_are_reused_not_reopened(pool):
    before = pool.stats.page_replacements
    shots = await asyncio.gather(*(pool.render(HORIZONTAL, RenderOptions(width=400 + 40 * (i % 3), height=300))
                                   for i in range(12)))
    assert {s.width for s in shots} == {400, 440, 480}
    assert all("吾輩" in s.text for s in shots)
    assert pool.stats.page_replacements == before and len(pool._idle) <= pool.config.pages
    # ... until a page has drawn `recycle_after` pictures: then it is replaced.
    config = pool.config
    pool.config = dataclasses.replace(config, recycle_after=2)
    try:
        for _ in range(4):
            await pool.render(HORIZONTAL)
    finally:
        pool.config = config
    assert pool.stats.page_replacements >= before + 1


async def test_cancelled_renders_leave_the_pool_usable(pool):
    restarts = pool.stats.browser_restarts
    tasks = [asyncio.create_task(pool.render(HORIZONTAL)) for _ in range(6)]
    await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    shots = await asyncio.gather(*(pool.render(HORIZONTAL) for _ in range(4)))
    assert all("吾輩" in s.text for s in shots) and pool.stats.browser_restarts == restarts


async def test_crashed_page_and_dead_browser_are_recovered(pool):
    # A renderer crash on an idle page: the next render on it fails, the page is replaced.
    await pool.render(HORIZONTAL)
    _gen, page = pool._idle[-1]
    with pytest.raises(Exception):  # noqa: B017 - the crash error type is Playwright's own
        await page.goto("chrome://crash", timeout=5000)
    shot = await pool.render(HORIZONTAL)
    assert "吾輩" in shot.text
    # The whole browser goes away under the pool: it is restarted, the render retried.
    restarts = pool.stats.browser_restarts
    await pool._browser.close()
    shots = await asyncio.gather(*(pool.render(HORIZONTAL) for _ in range(4)))
    assert all("吾輩" in s.text for s in shots)
    assert pool.stats.browser_restarts == restarts + 1


async def test_endless_script_is_cut_off_and_the_pool_lives_on():
    """With JavaScript on (never in real use) a spinning page hits the time limit, not the worker."""
    async with BrowserPool(PoolConfig(pages=2, timeout_s=2, attempts=2, javascript=True)) as js_pool:
        start = time.perf_counter()
        with pytest.raises(RenderError) as err:
            await js_pool.render("<p>loop</p><script>while (true) {}</script>")
        assert err.value.reason == "render_timeout" and js_pool.stats.page_replacements == 2
        assert time.perf_counter() - start < 15
        # Beside a spinning page, other pages still draw; the spinning one ends either way.
        results = await asyncio.gather(js_pool.render("<script>while (true) {}</script><p>loop</p>"),
                                       js_pool.render(HORIZONTAL), return_exceptions=True)
        assert isinstance(results[0], RenderError | Rendered)
        assert isinstance(results[1], Rendered) and "吾輩" in results[1].text
        assert "吾輩" in (await js_pool.render(HORIZONTAL)).text  # nothing left hung
        assert time.perf_counter() - start < 40


async def test_tofu_and_blank_checks():
    cover = FontCoverage.from_charsets(["20-7e 3000-303f", "3040-309f 4e00-9fff"])
    assert cover.covers("あ") and cover.covers("猫") and not cover.covers("ꀀ")
    assert cover.missing("あ 猫\nꀀA") == ["ꀀ"]
    assert installed_fonts().missing("縦書きの日本語テキスト、ＡＢＣ①") == []
    assert installed_fonts().missing("ꀀ𐀀") == ["ꀀ", "𐀀"]
    white = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(white, format="JPEG")
    assert pixel_stddev(white.getvalue()) < 1


async def test_tofu_page_is_rejected(pool):
    shot = await pool.render(sanitize("<p>これは読める文字です。ꀀꀁꀂ</p>"))
    assert "tofu" in [p.reason for p in problems(shot, Limits(min_chars=5))]
    blank = await pool.render(sanitize("<p style='color:#fff;background:#fff'>見えない文字です。見えない。</p>"))
    assert "blank" in [p.reason for p in problems(blank, Limits(min_chars=5))]


async def test_html2image_backend_same_interface():
    async with Html2ImageRenderer(workers=1, timeout_s=30) as h2i:
        shot = await h2i.render(HORIZONTAL, RenderOptions(width=640, height=360))
    assert shot.backend == "html2image" and shot.image[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(shot.image)).size == (640, 360)
    assert shot.text == "吾輩は猫である。名前はまだ無い。"
    assert problems(shot, Limits(min_chars=5)) == []
    assert markup_text("<table><tr><td>品名</td><td>価格</td></tr></table><style>p{}</style>") == "品名\t価格"
