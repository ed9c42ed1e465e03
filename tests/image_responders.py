"""Scripted model replies for the image generators, served by `synthgen.loopback_server`.

Stands in for a VLM and a Japanese LLM in tests and benchmarks: it checks that every VLM
request really carries a decodable base64 image (a request without one gets HTTP 400, as
a real server would fail it), and answers each prompt of caption-translate and
category-recaption in the shape a good model would. It proves the plumbing, not the data.
"""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

from PIL import Image

from synthgen.loopback_server import Reply, last_user_text

CAPTIONS_EN = {
    "short": "A red circle and a blue square on a white background ({w}x{h} image).",
    "detailed": ("The image shows a plain white background with a red circle on the left and a blue square "
                 "on the right. The shapes are flat and brightly coloured, and small dots of noise are "
                 "scattered across the picture. The picture is {w} by {h} pixels."),
    "dense": ("Objects: one red circle (left), one blue square (right), scattered coloured noise dots. "
              "Text: the label \"NO.7\" in black at the bottom left. Spatial relations: the circle is to the "
              "left of the square; the text is below both shapes. Size {w}x{h}."),
}
CAPTIONS_JA = {
    "short": "白い背景に赤い丸と青い四角が描かれた画像です。",
    "detailed": ("白い無地の背景に、左側に赤い丸、右側に青い四角が描かれています。どちらも平面的で鮮やかな色をしており、"
                 "画面全体に小さな色の点が散らばっています。"),
    "dense": ("赤い丸が一つ左に、青い四角が一つ右にあり、色の点が散らばっています。左下には黒で「NO.7」と書かれています。"
              "丸は四角の左にあり、文字は二つの図形の下にあります。"),
}
QUESTIONS = {
    "description": "この画像にはどんなものが写っていますか?",
    "counting": "画像の中に図形はいくつありますか?",
    "ocr": "左下に書かれている文字は何ですか?",
}
ANSWERS = {
    "description": "白い背景に、左に赤い丸、右に青い四角が描かれています。全体に小さな色の点も散らばっています。",
    "counting": "図形は二つあります。左側の赤い丸と、右側の青い四角です。",
    "ocr": "左下には黒い文字で「NO.7」と書かれています。",
}
GENERIC_QUESTION = "この画像を見て、どんな印象を受けますか?"
GENERIC_ANSWER = "白い背景に赤と青の図形が並んでいて、すっきりと明るい印象を受けます。色の点が少し賑やかさを添えています。"


class ImageChecks:
    """Counts the VLM requests seen and those whose image was missing or broken."""

    def __init__(self, decode: bool = True) -> None:
        self.decode = decode  # a benchmark server only checks the data URL, to spend its CPU on serving
        self.vlm_requests = 0
        self.bad_images: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def check(self, body: dict[str, Any]) -> tuple[int, int] | str:
        urls = [p["image_url"]["url"] for m in body.get("messages", []) if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "image_url"]
        with self._lock:
            self.vlm_requests += 1
        if len(urls) != 1:
            return self._bad(f"expected one image, got {len(urls)}")
        url = urls[0]
        if not url.startswith(("data:image/jpeg;base64,", "data:image/png;base64,", "data:image/webp;base64,")):
            return self._bad(f"not a base64 data URL: {url[:40]}")
        if not self.decode:
            return (0, 0)
        try:
            data = base64.b64decode(url.split(",", 1)[1], validate=True)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                size = img.size
        except Exception as exc:
            return self._bad(f"undecodable image: {exc}")
        with self._lock:
            self.sizes.append(size)
        return size

    def _bad(self, why: str) -> str:
        with self._lock:
            self.bad_images.append(why)
        return why


def style_of(prompt: str) -> str:
    if "one short English sentence" in prompt or "短い日本語の一文" in prompt:
        return "short"
    if "in detail" in prompt or "詳しく説明" in prompt:
        return "detailed"
    return "dense"


def category_of(prompt: str) -> str:
    for key, marker in (("counting", "数を数える"), ("ocr", "文字を読み取る")):
        if marker in prompt:
            return key
    return "description"


def image_responder(checks: ImageChecks | None = None, *, vlm_only: bool = False):
    """A responder for both image generators; one server can play every role."""
    checks = checks or ImageChecks()

    def respond(body: dict[str, Any]) -> str | Reply:
        messages = body.get("messages", [])
        has_image = any(isinstance(m.get("content"), list) and
                        any(p.get("type") == "image_url" for p in m["content"]) for m in messages)
        prompt = last_user_text(body)
        if has_image or vlm_only:
            size = checks.check(body)
            if isinstance(size, str):
                return Reply(status=400, raw=f'{{"error": "{size}"}}'.encode())
            style = style_of(prompt)
            if "English" in prompt:
                return CAPTIONS_EN[style].format(w=size[0], h=size[1])
            return CAPTIONS_JA[style]
        if "英文：" in prompt or "文章：" in prompt:
            return CAPTIONS_JA[_style_label(prompt)]
        if "質問を一つ作って" in prompt:
            return QUESTIONS.get(category_of(prompt), GENERIC_QUESTION)
        if "利用者の質問" in prompt:
            question = prompt.split("利用者の質問：", 1)[1].strip().splitlines()[0]
            key = next((k for k, q in QUESTIONS.items() if q == question), None)
            return ANSWERS[key] if key else GENERIC_ANSWER
        if "矛盾していないか" in prompt:
            return "一致"
        return Reply(status=400, raw=b'{"error": "unexpected prompt"}')

    respond.checks = checks  # type: ignore[attr-defined]
    return respond


def _style_label(prompt: str) -> str:
    if "短いキャプション" in prompt:
        return "short"
    if "詳しい説明文" in prompt:
        return "detailed"
    return "dense"
