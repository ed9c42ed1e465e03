"""The vllm engine's batching and marshalling, against a stand-in `vllm` module.

vLLM needs a GPU and cannot be installed in CI; this checks our side of the contract
(micro-batches of conversations, sampling params, images passed through as data URLs,
result fields), not vLLM itself. The missing-package error is tested for real.
"""

from __future__ import annotations

import asyncio
import sys
import types
from types import SimpleNamespace

import pytest

from synthgen.engine.errors import EngineUnavailable
from synthgen.engine.messages import image_part
from synthgen.engine.roles import build_roles, close_roles, resolve_roles
from synthgen.spec import RoleConfig


@pytest.fixture
def fake_vllm(monkeypatch):
    calls: list[tuple[list, dict]] = []

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, model, **engine_args):
            self.model = model
            self.engine_args = engine_args

        def chat(self, conversations, params, use_tqdm=False):
            calls.append((conversations, params.kw))
            return [SimpleNamespace(prompt_token_ids=[1, 2, 3],
                                    outputs=[SimpleNamespace(text=f" 応答{i} ", finish_reason="stop", token_ids=[7, 8])])
                    for i, _ in enumerate(conversations)]

    module = types.ModuleType("vllm")
    module.LLM = LLM
    module.SamplingParams = SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return calls


def test_concurrent_requests_become_one_batch(fake_vllm):
    from PIL import Image

    cfg = {"default": RoleConfig(engine="vllm", model="microsoft/Phi-3-vision-128k-instruct", max_tokens=32,
                                 temperature=0.2, options={"tensor_parallel_size": 1})}
    roles = build_roles(resolve_roles(cfg, ("vlm",)))
    picture = image_part(Image.new("RGB", (8, 8), "red"))

    async def go():
        try:
            return await asyncio.gather(*(
                roles["vlm"].chat([{"role": "user", "content": [{"type": "text", "text": f"説明 {i}"}, picture]}])
                for i in range(10)))
        finally:
            await close_roles(roles)

    results = asyncio.run(go())
    assert len(fake_vllm) == 1, "ten concurrent requests should reach vLLM as one batch"
    conversations, sampling = fake_vllm[0]
    assert len(conversations) == 10
    assert sampling == {"max_tokens": 32, "temperature": 0.2}
    assert conversations[0][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert {r.text for r in results} == {f"応答{i}" for i in range(10)}
    assert results[0].completion_tokens == 2 and results[0].prompt_tokens == 3


def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = {"default": RoleConfig(engine="vllm", model="m")}
    with pytest.raises(EngineUnavailable, match=r"synthgen\[vllm\]"):
        build_roles(resolve_roles(cfg, ("writer",)))
