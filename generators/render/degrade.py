"""Photographic degradations of a rendered page: perspective, blur, JPEG noise, shadow.

Why: OCR data made only of clean screenshots teaches a model to read clean screenshots; photos
of screens and paper are tilted, soft, noisy and unevenly lit. Each effect is mild enough that
every character stays legible (the targets, taken from the browser's text, do not change), is
drawn from the record's RNG, and is named in the row so a user can filter or weight them.
Pillow only; the picture keeps its size.
"""

from __future__ import annotations

import io
import random
from typing import Literal

from PIL import Image, ImageDraw, ImageFilter

Effect = Literal["perspective", "blur", "jpeg_noise", "shadow"]
EFFECTS: tuple[Effect, ...] = ("perspective", "blur", "jpeg_noise", "shadow")


def _perspective(img: Image.Image, rng: random.Random) -> Image.Image:
    """Pull each corner inward by up to 6% (as a phone held at a slight angle), on a grey table."""
    w, h = img.size
    dx, dy = w * 0.06, h * 0.06
    corners = [(rng.uniform(0, dx), rng.uniform(0, dy)), (w - rng.uniform(0, dx), rng.uniform(0, dy)),
               (w - rng.uniform(0, dx), h - rng.uniform(0, dy)), (rng.uniform(0, dx), h - rng.uniform(0, dy))]
    coeffs = _coefficients(corners, [(0, 0), (w, 0), (w, h), (0, h)])
    shade = rng.randint(90, 170)
    return img.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC,
                         fillcolor=(shade, shade, shade))


def _coefficients(dst: list[tuple[float, float]], src: list[tuple[float, float]]) -> list[float]:
    """The 8 coefficients mapping output points `dst` to input points `src` (PIL's convention)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return _solve(rows, rhs)


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the 8x8 system (no numpy needed)."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def _blur(img: Image.Image, rng: random.Random) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.6, 1.2)))


def _jpeg_noise(img: Image.Image, rng: random.Random) -> Image.Image:
    """Sensor-like grain, then a low-quality JPEG round trip (blocking and ringing)."""
    import numpy as np

    pixels = np.asarray(img, dtype=np.float32)
    grain = np.random.default_rng(rng.randrange(2**32)).normal(0.0, rng.uniform(6, 14), pixels.shape[:2])
    grained = Image.fromarray(np.clip(pixels + grain[..., None], 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    grained.save(buf, format="JPEG", quality=rng.randint(25, 45))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _shadow(img: Image.Image, rng: random.Random) -> Image.Image:
    """A soft darker band from one side, as a hand or a lamp would cast."""
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    pen = ImageDraw.Draw(mask)
    side = rng.choice(("left", "right", "top", "bottom"))
    depth = rng.uniform(0.25, 0.5)
    strength = rng.randint(60, 110)
    if side in ("left", "right"):
        span = int(w * depth)
        for i in range(span):
            x = i if side == "left" else w - 1 - i
            pen.line([(x, 0), (x, h)], fill=int(strength * (1 - i / span)))
    else:
        span = int(h * depth)
        for i in range(span):
            y = i if side == "top" else h - 1 - i
            pen.line([(0, y), (w, y)], fill=int(strength * (1 - i / span)))
    mask = mask.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 60))
    return Image.composite(Image.new("RGB", (w, h), (0, 0, 0)), img, mask)


_APPLY = {"perspective": _perspective, "blur": _blur, "jpeg_noise": _jpeg_noise, "shadow": _shadow}


def degrade(image: bytes, effects: list[str], rng: random.Random, *, fmt: str = "jpeg",
            quality: int = 85) -> bytes:
    """`image` with `effects` applied in a fixed order (geometry first, then light, then noise)."""
    if not effects:
        return image
    with Image.open(io.BytesIO(image)) as src:
        img = src.convert("RGB")
    for name in ("perspective", "shadow", "blur", "jpeg_noise"):
        if name in effects:
            img = _APPLY[name](img, rng)
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=quality)
    return buf.getvalue()


def draw_effects(rng: random.Random, chance: float, allowed: list[str]) -> list[str]:
    """With probability `chance`, one or two of the allowed effects; otherwise none."""
    if not allowed or rng.random() >= chance:
        return []
    return sorted(rng.sample(allowed, min(len(allowed), rng.choice((1, 1, 2)))))
