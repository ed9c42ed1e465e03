"""html2image as a second, simple backend: one Chromium process per picture.

It is what the seeds' pipeline used; we keep it as a fallback (no Playwright driver
needed) and as the baseline the benchmark measures the pool against. It cannot see the
laid-out DOM, so `text` is taken from the markup (block elements become line breaks) and
the picture is always the window size (no full-page growth, content size unknown). The
page is loaded from a `file://` URL, so the sanitiser's CSP is the fence here: it forbids
every fetch and every script, `file://` included, and all traffic is pointed at a dead proxy.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import uuid
from html.parser import HTMLParser
from pathlib import Path

from synthgen.generators.render.api import Rendered, RenderError, RenderOptions
from synthgen.generators.render.pool import DEAD_PROXY_ARGS, require_browser

# Headless `--screenshot` draws nothing when Blink scripting is switched off, so scripts are
# stopped by the sanitiser (removed) and the CSP (script-src falls back to 'none') instead.
FLAGS = ["--hide-scrollbars", "--default-background-color=ffffffff", "--no-sandbox", "--disable-gpu",
         "--disable-extensions", "--no-first-run", "--disable-background-networking", *DEAD_PROXY_ARGS]
BLOCKS = {"address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
          "fieldset", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header",
          "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul", "summary"}
CELLS = {"td", "th"}
HIDDEN = {"head", "style", "script", "title", "template", "rp"}


class _TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, _attrs: list[tuple[str, str | None]]) -> None:
        if tag in HIDDEN:
            self.hidden += 1
        elif tag in BLOCKS:
            self.parts.append("\n")
        elif tag in CELLS:
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(" ".join(data.split()) if data.strip() else (" " if data else ""))


def markup_text(document: str) -> str:
    """Visible text approximated from markup: what html2image users get instead of innerText."""
    parser = _TextOf()
    parser.feed(document)
    parser.close()
    lines = ["\t".join(c.strip() for c in line.split("\t") if c.strip()) for line in "".join(parser.parts).split("\n")]
    return "\n".join(line for line in lines if line)


class Html2ImageRenderer:
    name = "html2image"

    def __init__(self, *, executable: str = "/usr/bin/chromium", timeout_s: float = 30.0, workers: int = 2) -> None:
        self.executable = executable
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max(1, workers))
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def __aenter__(self) -> Html2ImageRenderer:
        require_browser(self.executable)
        self._tmp = tempfile.TemporaryDirectory(prefix="synthgen-h2i-")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _shoot(self, document: str, o: RenderOptions) -> bytes:
        from html2image import Html2Image

        assert self._tmp is not None, "use `async with Html2ImageRenderer(...)`"
        folder = Path(self._tmp.name)
        stem = uuid.uuid4().hex
        hti = Html2Image(browser="chromium", browser_executable=self.executable, output_path=str(folder),
                         temp_path=str(folder), custom_flags=list(FLAGS), disable_logging=True)
        hti.screenshot(html_str=document, save_as=f"{stem}.png", size=(o.width, o.height))
        png = folder / f"{stem}.png"
        (folder / f"{stem}.html").unlink(missing_ok=True)
        if not png.exists():
            raise RenderError("render_crash", "html2image wrote no picture")
        data = png.read_bytes()
        png.unlink()
        if o.fmt == "png":
            return data
        from PIL import Image

        buf = io.BytesIO()
        with Image.open(io.BytesIO(data)) as img:
            img.convert("RGB").save(buf, format="JPEG", quality=o.quality)
        return buf.getvalue()

    async def render(self, document: str, options: RenderOptions | None = None) -> Rendered:
        o = options or RenderOptions()
        async with self._slots:
            try:
                image = await asyncio.wait_for(asyncio.to_thread(self._shoot, document, o), self.timeout_s + 10)
            except TimeoutError as exc:
                raise RenderError("render_timeout", "html2image did not finish") from exc
        return Rendered(image=image, fmt=o.fmt, width=o.width, height=o.height, text=markup_text(document),
                        content_width=o.width, content_height=o.height, backend=self.name)
