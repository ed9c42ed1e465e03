"""LLaVA-style vision-language models in-process (transformers), for users without a server.

`AutoModelForImageTextToText` + `AutoProcessor` covers LlavaForConditionalGeneration and
its relatives; the processor's chat template places the image tokens, so prompts stay in
the OpenAI message format every other engine takes. Concurrent requests are micro-batched
onto one model thread, images included, like the text-only transformers engine.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

from synthgen.engine.errors import EngineUnavailable, RequestError
from synthgen.engine.local_batch import LocalRequest, MicroBatcher
from synthgen.engine.messages import ChatResult, Message
from synthgen.spec import RoleConfig

log = logging.getLogger(__name__)


def is_vision_checkpoint(model: str, options: dict[str, Any]) -> bool:
    """True when `model`'s config has a vision tower; `options.vision` overrides the guess."""
    if "vision" in options:
        return bool(options["vision"])
    if options.get("gguf_file"):
        return False  # GGUF checkpoints here are text-only models
    config = _read_config(model)
    return bool(config) and "vision_config" in config


def _read_config(model: str) -> dict[str, Any] | None:
    path = Path(model).expanduser()
    try:
        if path.is_dir():
            file = path / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(model, "config.json"))
        return json.loads(file.read_text(encoding="utf-8"))
    except Exception:  # unreadable: let the text engine's own loading say what is wrong
        log.debug("could not read config.json of %s", model, exc_info=True)
        return None


class TransformersVLMClient:
    def __init__(self, path: str, *, device: str | None = None, dtype: str | None = None,
                 max_batch: int = 8, display_name: str | None = None) -> None:
        self.path = path
        self.device = device
        self.dtype = dtype
        self.model = display_name or path
        self._model: Any = None
        self._proc: Any = None
        self._lock = threading.Lock()
        self._batcher = MicroBatcher(self._generate_batch, max_batch=max_batch, thread_name="synthgen-transformers-vlm")

    @classmethod
    def from_config(cls, cfg: RoleConfig) -> TransformersVLMClient:
        assert cfg.model
        opts = cfg.options
        return cls(cfg.model, device=opts.get("device"), dtype=opts.get("dtype"),
                   max_batch=int(opts.get("max_batch", 8)))

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            try:
                import torch
                from transformers import AutoModelForImageTextToText, AutoProcessor
            except ImportError as exc:
                raise EngineUnavailable(
                    "the transformers engine needs `pip install 'synthgen[local]'` (torch, transformers)") from exc
            proc = AutoProcessor.from_pretrained(self.path)
            dtype = getattr(torch, self.dtype) if self.dtype else None
            model = AutoModelForImageTextToText.from_pretrained(self.path, dtype=dtype)
            from synthgen.engine.transformers_engine import ready_for_generation

            ready_for_generation(model, proc.tokenizer, self.device)
            self._proc, self._model = proc, model

    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult:
        return await self._batcher.submit(messages, sampling)

    def _generate_batch(self, batch: list[LocalRequest]) -> list[ChatResult]:
        from synthgen.engine.transformers_engine import generate_batch

        self.load()
        proc, model = self._proc, self._model
        tok = proc.tokenizer
        texts, images = [], []
        for req in batch:
            messages, pictures = _processor_messages(req.messages)
            try:
                texts.append(proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            except Exception as exc:
                raise RequestError("bad_request", f"chat template failed: {exc}") from exc
            images.extend(pictures)
        try:
            enc = proc(text=texts, images=images or None, return_tensors="pt", padding=True).to(model.device)
        except (ValueError, TypeError) as exc:  # e.g. image tokens and images that do not match
            raise RequestError("bad_request", f"processor failed: {exc}") from exc
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
        return generate_batch(model, tok, enc, batch, lambda: self._batcher.should_stop(batch), self.model)

    async def aclose(self) -> None:
        await self._batcher.aclose()


def _processor_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI messages -> the processor's `{"type": "image"}` parts, and the decoded pictures in order."""
    import base64

    from PIL import Image

    converted, pictures = [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part in content or []:
            if part.get("type") == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            elif part.get("type") == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith("data:"):
                    raise RequestError("bad_request", "in-process engines take images as data URLs only")
                try:
                    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                    pictures.append(img.convert("RGB"))
                except Exception as exc:
                    raise RequestError("bad_request", f"undecodable image: {exc}") from exc
                parts.append({"type": "image"})
            else:
                raise RequestError("bad_request", f"unsupported content part {part.get('type')!r}")
        converted.append({"role": message["role"], "content": parts})
    return converted, pictures
