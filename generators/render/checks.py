"""Quality checks on a rendered page: drawn, readable, not tofu, not absurdly tall.

Tofu (the empty boxes a browser draws for a character no font has) is found from the
fonts fontconfig knows, because Chromium on Linux picks fallback fonts through fontconfig:
a character outside every installed font's charset can only be drawn as a box.
"""

from __future__ import annotations

import bisect
import io
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageStat

from synthgen.generators.render.api import Rendered


@dataclass(frozen=True)
class FontCoverage:
    """Codepoint ranges covered by at least one installed font, merged and sorted."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def from_charsets(cls, charsets: list[str]) -> FontCoverage:
        ranges: list[tuple[int, int]] = []
        for charset in charsets:
            for part in charset.split():
                lo, _, hi = part.partition("-")
                try:
                    ranges.append((int(lo, 16), int(hi or lo, 16)))
                except ValueError:
                    continue
        ranges.sort()
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return cls(tuple(r[0] for r in merged), tuple(r[1] for r in merged))

    def covers(self, char: str) -> bool:
        cp = ord(char)
        i = bisect.bisect_right(self.starts, cp) - 1
        return i >= 0 and cp <= self.ends[i]

    def missing(self, text: str) -> list[str]:
        """Characters of `text` that no installed font can draw (whitespace and controls aside)."""
        out: dict[str, None] = {}
        for ch in set(text):
            if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
                continue
            if not self.covers(ch):
                out[ch] = None
        return sorted(out)

    def __bool__(self) -> bool:
        return bool(self.starts)


@lru_cache(maxsize=1)
def installed_fonts() -> FontCoverage:
    """The union of every installed font's charset, read once from `fc-list`."""
    if shutil.which("fc-list") is None:
        raise RuntimeError("fc-list (fontconfig) is not installed; it is needed to detect tofu")
    proc = subprocess.run(["fc-list", "--format", "%{charset}\n"], capture_output=True, text=True,
                          timeout=60, check=True)
    return FontCoverage.from_charsets(proc.stdout.splitlines())


def pixel_stddev(image: bytes) -> float:
    """Grey-level standard deviation of a downscaled copy: near 0 means a blank picture."""
    with Image.open(io.BytesIO(image)) as img:
        img.draft("L", (256, 256))  # JPEG decodes at 1/2..1/8 scale: cheap
        grey = img.convert("L")
        grey.thumbnail((256, 256))
        return float(ImageStat.Stat(grey).stddev[0])


@dataclass(frozen=True)
class Limits:
    min_chars: int = 20
    min_stddev: float = 4.0
    max_aspect: float = 6.0  # height / width (and width / height)


@dataclass(frozen=True)
class Problem:
    reason: str
    detail: str


def problems(rendered: Rendered, limits: Limits, coverage: FontCoverage | None = None) -> list[Problem]:
    """Every reason this picture should not become a training record (empty when it is fine)."""
    found: list[Problem] = []
    if rendered.clipped:
        found.append(Problem("too_large", f"content {rendered.content_width}x{rendered.content_height} "
                                          f"is larger than the picture {rendered.width}x{rendered.height}"))
    if rendered.off_page_text:
        found.append(Problem("text_off_page", f"{rendered.off_page_text} text boxes lie outside the page"))
    aspect = max(rendered.height / max(rendered.width, 1), rendered.width / max(rendered.height, 1))
    if aspect > limits.max_aspect:
        found.append(Problem("bad_aspect", f"{rendered.width}x{rendered.height}"))
    chars = len("".join(rendered.text.split()))
    if chars < limits.min_chars:
        found.append(Problem("too_little_text", f"{chars} visible characters"))
    coverage = coverage if coverage is not None else installed_fonts()
    if coverage:
        missing = coverage.missing(rendered.text)
        if missing:
            found.append(Problem("tofu", "no installed font has " + " ".join(f"U+{ord(c):04X}" for c in missing[:20])))
    stddev = pixel_stddev(rendered.image)
    if stddev < limits.min_stddev:
        found.append(Problem("blank", f"pixel stddev {stddev:.2f}"))
    return found
