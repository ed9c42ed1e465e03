"""Synthetic pictures for tests, benchmarks and offline demos: shapes, text and noise.

Drawn with PIL from a seed, so a run over them is reproducible and needs no download.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "yellow": (235, 200, 40)}


def draw(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A few coloured shapes, a short word and a little noise on a white background."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (255, 255, 255))
    pen = ImageDraw.Draw(img)
    w, h = size
    for _ in range(rng.randint(1, 4)):
        colour = COLOURS[rng.choice(sorted(COLOURS))]
        x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
        box = (x0, y0, x0 + rng.randrange(10, w // 2), y0 + rng.randrange(10, h // 2))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=colour)
    pen.text((4, h - 14), f"NO.{seed}", fill=(0, 0, 0))
    for _ in range(w * h // 50):
        img.putpixel((rng.randrange(w), rng.randrange(h)), tuple(rng.randrange(256) for _ in range(3)))
    return img


def encode(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def write_folder(folder: Path, count: int, *, start: int = 0, size: tuple[int, int] = (160, 120)) -> list[Path]:
    """`count` distinct PNGs named img-00000.png, ... (sorted order = seed order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img-{i:05d}.png"
        path.write_bytes(encode(draw(i, size)))
        paths.append(path)
    return paths
