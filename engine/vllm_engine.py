"""The `vllm` engine: in-process `vllm.LLM` offline generation, fed in micro-batches.

vLLM schedules a whole list of prompts with continuous batching inside one `chat` call,
so concurrent records are gathered into lists (images included, as multimodal parts)
instead of being sent one by one; the seeds' pipeline lost most of its week to unbatched
VLM requests.
"""

from __future__ import annotations

from typing import Any

from synthgen.engine.backends import Backend
from synthgen.engine.errors import EngineUnavailable
from synthgen.engine.local_batch import LocalRequest, MicroBatcher
from synthgen.engine.messages import ChatResult, Message
from synthgen.spec import RoleConfig

_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "stop", "seed")


class VLLMClient:
    def __init__(self, model: str, engine_args: dict[str, Any], *, max_batch: int = 256) -> None:
        self.model = model
        self._engine_args = engine_args
        self._llm: Any = None
        self._batcher = MicroBatcher(self._generate_batch, max_batch=max_batch, max_wait=0.05,
                                     thread_name="synthgen-vllm")

    @classmethod
    def from_config(cls, cfg: RoleConfig) -> VLLMClient:
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable("the vllm engine needs `pip install 'synthgen[vllm]'` on a GPU machine") from exc
        assert cfg.model
        opts = dict(cfg.options)
        max_batch = int(opts.pop("max_batch", 256))
        return cls(cfg.model, opts, max_batch=max_batch)

    def _load(self) -> Any:
        if self._llm is None:
            from vllm import LLM

            self._llm = LLM(model=self.model, **self._engine_args)
        return self._llm

    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult:
        return await self._batcher.submit(messages, sampling)

    def _generate_batch(self, batch: list[LocalRequest]) -> list[ChatResult]:
        from vllm import SamplingParams

        llm = self._load()
        params = SamplingParams(**{k: v for k, v in batch[0].sampling.items() if k in _SAMPLING_KEYS})
        # vLLM's chat() accepts OpenAI-style messages, image_url data URLs included.
        outputs = llm.chat([r.messages for r in batch], params, use_tqdm=False)
        results = []
        for out in outputs:
            comp = out.outputs[0]
            results.append(ChatResult(text=comp.text.strip(), finish_reason=comp.finish_reason,
                                      prompt_tokens=len(out.prompt_token_ids or []),
                                      completion_tokens=len(comp.token_ids), model=self.model))
        return results

    async def aclose(self) -> None:
        await self._batcher.aclose()


def _check(role: str, cfg: RoleConfig) -> None:
    if not cfg.model:
        raise ValueError(f"role {role!r}: the vllm engine needs a model (Hub id or local path)")


backend = Backend(name="vllm", in_process=True, make=VLLMClient.from_config, check=_check,
                  description="vLLM's offline engine in this process (GPU), continuous batching")
