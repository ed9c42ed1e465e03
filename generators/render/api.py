"""The small interface every rendering backend implements, and the factory that picks one."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

ImageFormat = Literal["jpeg", "png"]


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How to draw one page. `full_page` grows the picture to the content, up to the max size."""

    width: int = 1024
    height: int = 768
    full_page: bool = True
    fmt: ImageFormat = "jpeg"
    quality: int = 85
    max_width: int = 2048
    max_height: int = 4096


@dataclass(slots=True)
class Rendered:
    image: bytes
    fmt: ImageFormat
    width: int
    height: int
    # Text as the browser lays it out (document.body.innerText); from the markup for html2image.
    text: str
    # The document's full scroll size; larger than width/height when the picture was clipped.
    content_width: int
    content_height: int
    backend: str
    blocked_requests: list[str] = field(default_factory=list)
    # Text boxes laid out outside the document (listed by innerText, drawn nowhere).
    off_page_text: int = 0

    @property
    def clipped(self) -> bool:
        return self.content_height > self.height or self.content_width > self.width


class RenderError(Exception):
    """A page that could not be drawn even after recovery; `reason` is a short slug."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Renderer(Protocol):
    name: str

    async def render(self, document: str, options: RenderOptions) -> Rendered: ...


def open_renderer(backend: str, *, pages: int = 4, timeout_s: float = 15.0,
                  executable: str = "/usr/bin/chromium") -> AbstractAsyncContextManager[Renderer]:
    """An async context manager yielding a started renderer; it is closed on exit."""
    if backend == "pool":
        from synthgen.generators.render.pool import BrowserPool, PoolConfig

        return BrowserPool(PoolConfig(executable=executable, pages=pages, timeout_s=timeout_s))
    if backend == "html2image":
        from synthgen.generators.render.html2image_backend import Html2ImageRenderer

        return Html2ImageRenderer(executable=executable, timeout_s=timeout_s, workers=pages)
    raise ValueError(f"unknown render backend {backend!r} (pool or html2image)")
