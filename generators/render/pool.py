"""A persistent pool of sandboxed headless Chromium pages (Playwright + Debian's chromium).

Why a pool: starting a browser per picture (html2image) costs about a second; a page that
stays open redraws new markup in milliseconds. Pages are reused rather than given a new
context per render: with JavaScript off there is no script state, cookies or storage to
carry over, and `set_content` replaces the whole document.

The browser is the second fence around LLM-written HTML (`sandbox.sanitize` is the first):
JavaScript is off for the context, every request the page makes is answered by our route
handler with an abort (and counted), all traffic that escapes routing goes to a dead proxy,
and each render has a time limit. A page that hangs or crashes is closed and the render is
retried on a fresh one; a browser that dies or will not close a page is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from synthgen.generators.render.api import Rendered, RenderError, RenderOptions

log = logging.getLogger(__name__)

# Everything a page could reach outside the routed fetch path goes to a closed port.
DEAD_PROXY_ARGS = ("--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>")
QUIET_ARGS = ("--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-default-apps", "--disable-extensions", "--no-first-run", "--mute-audio",
              "--disable-dev-shm-usage", "--disable-gpu", "--dns-prefetch-disable",
              "--disable-features=Translate,MediaRouter,OptimizationHints,InterestFeedContentSuggestions")
# Page size, innerText, and how many text boxes lie outside the scrollable document (drawn
# nowhere: e.g. absolutely positioned at a negative offset) although innerText lists them.
# The scroll origin is probed because a vertical-rl page scrolls to negative x.
MEASURE = """() => {
  const de = document.documentElement, body = document.body;
  if (!body) return [de.scrollWidth, de.scrollHeight, '', 0];
  const sx = window.scrollX, sy = window.scrollY;
  window.scrollTo(-1e7, -1e7);
  const minX = window.scrollX, minY = window.scrollY;
  window.scrollTo(sx, sy);
  const sw = de.scrollWidth, sh = de.scrollHeight;
  const walk = document.createTreeWalker(body, NodeFilter.SHOW_TEXT), range = document.createRange();
  let off = 0;
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (!n.data.trim()) continue;
    range.selectNodeContents(n);
    for (const b of range.getClientRects()) {
      if (b.width === 0 && b.height === 0) continue;
      const l = b.left + sx, t = b.top + sy;
      if (l < minX - 1 || t < minY - 1 || l + b.width > minX + sw + 1 || t + b.height > minY + sh + 1) off += 1;
    }
  }
  return [sw, sh, body.innerText, off];
}"""


def require_browser(executable: str) -> None:
    """A missing browser is a setup error with a fix, not a failure of every record."""
    if not (shutil.which(executable) or os.access(executable, os.X_OK)):
        raise FileNotFoundError(f"Chromium not found at {executable!r}: install Debian's `chromium` and "
                                "`fonts-noto-cjk` (scripts/setup.sh does), or set params.chromium to its path")


@dataclass(frozen=True)
class PoolConfig:
    executable: str = "/usr/bin/chromium"
    pages: int = 4
    timeout_s: float = 15.0
    attempts: int = 2
    # Off in every real use. Tests turn it on to prove that a page spinning in a script loop
    # is killed and replaced rather than hanging a worker.
    javascript: bool = False
    extra_args: tuple[str, ...] = ()
    close_timeout_s: float = 5.0
    # A page is closed and replaced after this many renders, so nothing a long run leaves
    # in one renderer process (memory, caches) can grow without bound.
    recycle_after: int = 2000


@dataclass
class PoolStats:
    renders: int = 0
    failures: int = 0
    page_replacements: int = 0
    browser_restarts: int = 0
    blocked_requests: int = 0
    blocked_sample: list[str] = field(default_factory=list)


class BrowserPool:
    """`async with BrowserPool(cfg) as pool: await pool.render(document, options)`."""

    name = "pool"

    def __init__(self, config: PoolConfig | None = None) -> None:
        self.config = config or PoolConfig()
        self.stats = PoolStats()
        self._pw: Any = None
        self._browser: Any = None
        self._context: Any = None
        self._generation = 0
        self._idle: list[tuple[int, Any]] = []
        self._slots = asyncio.Semaphore(self.config.pages)
        self._restart_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._blocked_by_page: dict[int, list[str]] = {}
        self._uses: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> BrowserPool:
        from playwright.async_api import async_playwright

        require_browser(self.config.executable)

        self._pw = await async_playwright().start()
        try:
            await self._launch()
        except Exception:
            await self._pw.stop()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for task in list(self._background):
            task.cancel()
        await self._close_browser()
        if self._pw is not None:
            with contextlib.suppress(Exception):
                await self._pw.stop()
            self._pw = None

    async def _launch(self) -> None:
        cfg = self.config
        try:
            self._browser = await self._pw.chromium.launch(
                executable_path=cfg.executable, headless=True,
                args=[*DEAD_PROXY_ARGS, *QUIET_ARGS, *cfg.extra_args], timeout=60_000)
        except Exception as exc:
            raise RenderError("browser_unavailable", f"cannot start {cfg.executable}: {exc}") from exc
        self._context = await self._browser.new_context(
            java_script_enabled=cfg.javascript, service_workers="block", accept_downloads=False,
            offline=True, bypass_csp=False, locale="ja-JP", device_scale_factor=1)
        await self._context.route("**/*", self._block)
        await self._context.route_web_socket("**/*", self._block_socket)
        self._generation += 1
        self._idle.clear()

    async def _close_browser(self) -> None:
        browser, self._browser, self._context = self._browser, None, None
        self._idle.clear()
        if browser is None:
            return
        try:
            await asyncio.wait_for(browser.close(), self.config.close_timeout_s)
        except Exception:
            log.warning("browser did not close in time; its process is left to the driver")

    async def _block(self, route: Any) -> None:
        """Every request a page makes ends here, aborted: the page itself is set, not fetched."""
        url = route.request.url[:200]
        self.stats.blocked_requests += 1
        if len(self.stats.blocked_sample) < 50:
            self.stats.blocked_sample.append(url)
        with contextlib.suppress(Exception):
            per_page = self._blocked_by_page.get(id(route.request.frame.page))
            if per_page is not None and len(per_page) < 20:
                per_page.append(url)
        with contextlib.suppress(Exception):
            await route.abort("blockedbyclient")

    async def _block_socket(self, ws: Any) -> None:
        """A WebSocket is never connected to its server: it is closed where it opens."""
        self.stats.blocked_requests += 1
        if len(self.stats.blocked_sample) < 50:
            self.stats.blocked_sample.append(ws.url[:200])
        with contextlib.suppress(Exception):
            await ws.close()

    # -- pages -----------------------------------------------------------------------------
    async def _take_page(self) -> tuple[int, Any]:
        while self._idle:
            gen, page = self._idle.pop()
            if gen == self._generation and not page.is_closed():
                return gen, page
        if self._browser is None or not self._browser.is_connected():
            await self._restart(self._generation)
        gen = self._generation
        return gen, await self._context.new_page()

    def _return_page(self, gen: int, page: Any) -> None:
        uses = self._uses[id(page)] = self._uses.get(id(page), 0) + 1
        if gen == self._generation and not page.is_closed() and uses < self.config.recycle_after:
            self._idle.append((gen, page))
        else:
            self._spawn(self._discard(page))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _discard(self, page: Any) -> bool:
        """Close a suspect page; False when the browser would not even do that."""
        self.stats.page_replacements += 1
        self._blocked_by_page.pop(id(page), None)
        self._uses.pop(id(page), None)
        try:
            await asyncio.wait_for(page.close(run_before_unload=False), self.config.close_timeout_s)
            return True
        except Exception:
            return False

    async def _restart(self, seen_generation: int) -> None:
        async with self._restart_lock:
            if seen_generation != self._generation and self._browser is not None and self._browser.is_connected():
                return  # someone else already restarted it
            self.stats.browser_restarts += 1
            log.warning("restarting the browser (generation %d)", self._generation)
            await self._close_browser()
            await self._launch()

    async def _recover(self, gen: int, page: Any) -> None:
        if page is not None and gen != self._generation:
            self._spawn(self._discard(page))  # its browser is already gone
            return
        browser_ok = self._browser is not None and self._browser.is_connected()
        if page is not None and browser_ok and await self._discard(page):
            return
        await self._restart(gen)

    # -- rendering -------------------------------------------------------------------------
    async def render(self, document: str, options: RenderOptions | None = None) -> Rendered:
        """Draw `document` (already sanitised); retried on a fresh page after a hang or crash."""
        options = options or RenderOptions()
        last: BaseException | None = None
        for attempt in range(self.config.attempts):
            async with self._slots:
                gen, page = self._generation, None
                try:
                    async with asyncio.timeout(self.config.timeout_s):
                        gen, page = await self._take_page()
                        rendered = await self._draw(page, document, options)
                except asyncio.CancelledError:
                    # The record was cancelled mid-draw: the page may still be busy, so it is
                    # closed in the background rather than handed to the next render.
                    if page is not None:
                        self._spawn(self._discard(page))
                    raise
                except RenderError:
                    raise
                except Exception as exc:  # TimeoutError, playwright Error (crash, closed target)
                    last = exc
                    log.info("render failed on attempt %d: %s", attempt + 1, exc)
                    await self._recover(gen, page)
                    continue
                self._return_page(gen, page)
                self.stats.renders += 1
                return rendered
        self.stats.failures += 1
        reason = "render_timeout" if isinstance(last, TimeoutError) else "render_crash"
        raise RenderError(reason, f"{type(last).__name__}: {str(last)[:300]}")

    async def _draw(self, page: Any, document: str, o: RenderOptions) -> Rendered:
        size = page.viewport_size
        if not size or size["width"] != o.width or size["height"] != o.height:
            await page.set_viewport_size({"width": o.width, "height": o.height})
        blocked = self._blocked_by_page[id(page)] = []
        timeout_ms = self.config.timeout_s * 1000
        await page.set_content(document, wait_until="domcontentloaded", timeout=timeout_ms)
        content_w, content_h, text, off_page = await page.evaluate(MEASURE)
        if o.full_page:
            width = max(o.width, min(int(content_w), o.max_width))
            height = max(o.height, min(int(content_h), o.max_height))
        else:
            width, height = o.width, o.height
        shot: dict[str, Any] = {"type": o.fmt, "timeout": timeout_ms, "animations": "disabled",
                                "caret": "hide", "scale": "css"}
        if o.fmt == "jpeg":
            shot["quality"] = o.quality
        if (width, height) != (o.width, o.height):
            shot.update(full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})
        image = await page.screenshot(**shot)
        return Rendered(image=image, fmt=o.fmt, width=width, height=height, text=text,
                        content_width=int(content_w), content_height=int(content_h), backend=self.name,
                        blocked_requests=list(blocked), off_page_text=int(off_page))


async def smoke(document: str = "<p>日本語のテスト</p>") -> float:
    """Seconds to start a pool and draw one page; used by the benchmark's warm-up."""
    start = time.perf_counter()
    async with BrowserPool(PoolConfig(pages=1)) as pool:
        await pool.render(document)
    return time.perf_counter() - start
