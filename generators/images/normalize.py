"""Decode an input image once into the form every model sees: upright, RGB, bounded, re-encoded.

Everything a VLM is sent and every dataset row holds comes out of `normalize`, so EXIF
rotation, CMYK/palette/alpha handling and size limits are decided in one place, and the
content hash of the result names the image (two copies of a photo get the same hash).
A bad input raises `ImageRejected`, a `Skip`, so it fails its record and never the run.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from synthgen.engine.plugin import Skip

Format = Literal["jpeg", "png"]


class ImageRejected(Skip):
    """An input that is not a usable image; `reason` is a stable slug such as `image_too_small`."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_side: int = 1024        # longest side after normalising (downscaled, aspect kept)
    min_side: int = 32          # shortest side of the input below which it is too small to describe
    max_pixels: int = 80_000_000  # inputs above this are refused before decoding (decompression bombs)
    max_bytes: int = 50 * 1024 * 1024
    max_aspect: float = 20.0    # long/short side; panoramas beyond this become unreadable strips
    format: Format = "jpeg"
    quality: int = 90


@dataclass(frozen=True, slots=True)
class NormalizedImage:
    data: bytes
    width: int
    height: int
    sha256: str
    mime: str
    original_size: tuple[int, int]
    original_format: str

    def cell(self) -> dict[str, bytes | None]:
        """The `datasets.Image` cell: the normalised bytes and no path, so a row stands alone."""
        return {"bytes": self.data, "path": None}


def normalize(data: bytes, limits: Limits = Limits()) -> NormalizedImage:
    """Bytes in any PIL-readable format -> re-encoded RGB JPEG/PNG; raises ImageRejected."""
    if not data:
        raise ImageRejected("empty_image", "0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageRejected("image_too_large", f"{len(data)} bytes > {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            width, height = img.size
            _check_size(width, height, limits)
            if fmt == "JPEG":
                # Decode JPEGs at a reduced scale straight away: much cheaper for huge photos.
                img.draft("RGB", (limits.max_side, limits.max_side))
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("image_too_large", str(exc)) from None
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"unrecognised format, starts with {data[:16]!r}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt streams
        raise ImageRejected("corrupt_image", f"{type(exc).__name__}: {exc}") from None
    if _already_normal(img, fmt, (width, height), limits):
        # Our own output (e.g. a caption-translate dataset read by category-recaption): keep the
        # bytes, so the content hash still names the same image and JPEG is not re-compressed.
        return NormalizedImage(data=data, width=width, height=height, sha256=hashlib.sha256(data).hexdigest(),
                               mime="image/png" if fmt == "PNG" else "image/jpeg",
                               original_size=(width, height), original_format=fmt)
    try:
        img = _upright_rgb(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected("corrupt_image", f"{type(exc).__name__}: {exc}") from None
    img = _cap_side(img, limits.max_side)
    out = io.BytesIO()
    if limits.format == "png":
        img.save(out, format="PNG", optimize=False)
        mime = "image/png"
    else:
        img.save(out, format="JPEG", quality=limits.quality, optimize=False)
        mime = "image/jpeg"
    encoded = out.getvalue()
    return NormalizedImage(data=encoded, width=img.width, height=img.height,
                           sha256=hashlib.sha256(encoded).hexdigest(), mime=mime,
                           original_size=(width, height), original_format=fmt)


def _check_size(width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_pixels:
        raise ImageRejected("image_too_large", f"{width}x{height} px > {limits.max_pixels} px")
    if min(width, height) < limits.min_side:
        raise ImageRejected("image_too_small", f"{width}x{height} px, shortest side < {limits.min_side}")
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise ImageRejected("image_aspect_ratio", f"{width}x{height} px, ratio > {limits.max_aspect}")


def _already_normal(img: Image.Image, fmt: str, size: tuple[int, int], limits: Limits) -> bool:
    return (fmt == limits.format.upper() and img.mode == "RGB" and img.size == size
            and max(img.size) <= limits.max_side and "exif" not in img.info and "icc_profile" not in img.info
            and not getattr(img, "is_animated", False))


def _upright_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation, take the first frame, flatten alpha on white, convert to RGB."""
    if getattr(img, "is_animated", False):
        img.seek(0)
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")  # 16-bit greyscale: scale, do not clip
    return img.convert("RGB")  # CMYK (Adobe inverted ones are undone by PIL's decoder), L, P, YCbCr


def _cap_side(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
