"""The engine's request path against a real loopback HTTP server with injected faults."""

from __future__ import annotations

import asyncio
import time

import pytest

from synthgen.engine.errors import RequestError
from synthgen.engine.roles import build_roles, close_roles, resolve_roles
from synthgen.loopback_server import LoopbackServer, Reply
from synthgen.spec import RoleConfig


def _roles(server: LoopbackServer, **extra):
    cfg = {"default": RoleConfig(base_url=server.base_url, model="m", **extra)}
    return build_roles(resolve_roles(cfg, ("writer",)))


def _script(*replies):
    """Serve the given replies in order, then plain text."""
    queue = list(replies)

    def responder(_body):
        return queue.pop(0) if queue else "こんにちは"

    return responder


async def _chat_once(server, **extra):
    roles = _roles(server, **extra)
    try:
        result = await roles["writer"].chat([{"role": "user", "content": "hi"}])
        return result, roles["writer"].usage
    finally:
        await close_roles(roles)


def test_retries_429_and_5xx_then_succeeds():
    with LoopbackServer(_script(Reply(status=429), Reply(status=500), Reply(status=503))) as srv:
        result, usage = asyncio.run(_chat_once(srv))
    assert result.text == "こんにちは"
    assert srv.requests == 4
    assert usage.retries == 3 and usage.requests == 1 and usage.failed == 0
    assert usage.completion_tokens > 0 and usage.prompt_tokens == 10


def test_honours_retry_after():
    with LoopbackServer(_script(Reply(status=429, headers={"Retry-After": "1"}))) as srv:
        start = time.perf_counter()
        asyncio.run(_chat_once(srv))
    assert time.perf_counter() - start >= 1.0


def test_no_retry_on_400():
    with LoopbackServer(_script(Reply(status=400, raw=b'{"error":"bad"}'))) as srv, \
            pytest.raises(RequestError) as err:
        asyncio.run(_chat_once(srv))
    assert err.value.reason == "http_400"
    assert srv.requests == 1


def test_timeout_and_malformed_json_are_retried():
    with LoopbackServer(_script(Reply(hang=2.0, text="late"), Reply(raw=b"{not json"))) as srv:
        result, usage = asyncio.run(_chat_once(srv, timeout=0.5))
    assert result.text == "こんにちは"
    assert usage.retries == 2


def test_gives_up_after_bounded_attempts_with_reason():
    with LoopbackServer(lambda _b: Reply(status=500)) as srv:
        roles = _roles(srv, max_attempts=3)

        async def go():
            try:
                await roles["writer"].chat([{"role": "user", "content": "x"}])
            finally:
                await close_roles(roles)

        with pytest.raises(RequestError) as err:
            asyncio.run(go())
    assert srv.requests == 3
    assert err.value.reason == "http_500"
    assert roles["writer"].usage.failures_by_reason == {"http_500": 1}


def test_connection_refused_is_a_connection_error():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cfg = {"default": RoleConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_attempts=2)}
    roles = build_roles(resolve_roles(cfg, ("writer",)))

    async def go():
        try:
            await roles["writer"].chat([{"role": "user", "content": "x"}])
        finally:
            await close_roles(roles)

    with pytest.raises(RequestError) as err:
        asyncio.run(go())
    assert err.value.reason == "connection"


def test_semaphore_bounds_concurrency():
    in_flight = peak = 0

    with LoopbackServer(latency=0.05) as srv:
        roles = _roles(srv, concurrency=4)
        original = roles["writer"].client.complete

        async def counting(*args, **kwargs):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await original(*args, **kwargs)
            finally:
                in_flight -= 1

        roles["writer"].client.complete = counting

        async def go():
            try:
                await asyncio.gather(*(roles["writer"].chat([{"role": "user", "content": "x"}]) for _ in range(20)))
            finally:
                await close_roles(roles)

        asyncio.run(go())
    assert peak == 4


def test_resolve_roles_layers_default_and_checks():
    cfg = {"default": RoleConfig(base_url="http://127.0.0.1:1/v1", model="a", temperature=0.1),
           "answerer": RoleConfig(model="b", max_tokens=7)}
    resolved = resolve_roles(cfg, ("writer", "answerer"))
    assert resolved["writer"].model == "a" and resolved["answerer"].model == "b"
    assert resolved["answerer"].temperature == 0.1 and resolved["answerer"].max_tokens == 7
    assert resolved["writer"].engine == "openai"
    with pytest.raises(ValueError, match="does not use"):
        resolve_roles({"judge": RoleConfig()}, ("writer",))
    with pytest.raises(ValueError, match="no model name"):
        resolve_roles({"default": RoleConfig(base_url="http://127.0.0.1:1/v1")}, ("writer",))
    # no endpoint anywhere: the embedded in-process model
    assert resolve_roles({}, ("writer",))["writer"].engine == "transformers"


def test_roles_with_same_endpoint_share_a_client():
    cfg = {"default": RoleConfig(base_url="http://127.0.0.1:1/v1", model="a")}
    roles = build_roles(resolve_roles(cfg, ("writer", "answerer")))
    assert roles["writer"].client is roles["answerer"].client
    asyncio.run(close_roles(roles))


def test_admission_halves_on_429_and_recovers():
    from synthgen.engine.admission import AdaptiveLimit

    limit = AdaptiveLimit(16, cooldown=0.0)
    limit.overloaded()
    assert limit.limit == 8
    limit.overloaded()
    assert limit.limit == 4
    for _ in range(4 + 5 + 6):
        limit.succeeded()
    assert limit.limit == 7
    for _ in range(1000):
        limit.succeeded()
    assert limit.limit == 16  # never above the configured concurrency


def test_admission_cancelled_waiters_do_not_leak_slots():
    from synthgen.engine.admission import AdaptiveLimit

    async def go():
        limit = AdaptiveLimit(1)
        await limit.acquire()
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        limit.release()
        await asyncio.gather(waiter, return_exceptions=True)
        assert limit.in_use == 0
        await asyncio.wait_for(limit.acquire(), 1)

    asyncio.run(go())


def test_a_burst_of_429s_lowers_the_roles_limit():
    with LoopbackServer(_script(*[Reply(status=429, headers={"Retry-After": "0"})] * 3)) as srv:
        roles = _roles(srv, concurrency=64)

        async def go():
            try:
                await roles["writer"].chat([{"role": "user", "content": "x"}])
            finally:
                await close_roles(roles)

        asyncio.run(go())
    assert roles["writer"].admission.limit < 64
