"""Chat message helpers: the OpenAI format is the lingua franca of every engine."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]


@dataclass(slots=True)
class ChatResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str


def image_part(image: Any, fmt: str = "JPEG") -> dict[str, Any]:
    """An `image_url` content part holding the picture as a data URL.

    Accepts encoded bytes (sent as they are, sniffing PNG/JPEG/WebP) or a PIL image.
    """
    if isinstance(image, bytes | bytearray):
        data = bytes(image)
        mime = _sniff(data)
    else:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format=fmt, quality=92)
        data = buf.getvalue()
        mime = "image/jpeg" if fmt.upper() == "JPEG" else f"image/{fmt.lower()}"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def user(content: str | list[dict[str, Any]]) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def system(content: str) -> Message:
    return {"role": "system", "content": content}


def text_of(message: Message) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def images_of(message: Message) -> list[bytes]:
    """Decoded images of a message's data-URL parts (for in-process engines)."""
    content = message.get("content")
    if isinstance(content, str) or not content:
        return []
    out = []
    for part in content:
        if part.get("type") == "image_url":
            url = part["image_url"]["url"]
            if not url.startswith("data:"):
                raise ValueError("in-process engines take images as data URLs only")
            out.append(base64.b64decode(url.split(",", 1)[1]))
    return out
