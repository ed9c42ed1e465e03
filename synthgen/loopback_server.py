"""A loopback OpenAI-compatible chat server for tests, benchmarks and offline demos.

It answers `/v1/chat/completions` after a fixed latency with a reply from a `responder`
function, and can inject faults (status codes, hangs, malformed JSON) so the engine's
retry paths are exercised against real HTTP rather than mocks. It only ever binds to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web


@dataclass
class Reply:
    """What a responder may return instead of text: a status, raw body, headers or a hang."""

    text: str = ""
    status: int = 200
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    finish_reason: str = "stop"


Responder = Callable[[dict[str, Any]], "str | Reply"]


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def japanese_responder(body: dict[str, Any]) -> str:
    """Plausible Japanese replies for persona-qa's three prompts, without any model."""
    prompt = last_user_text(body)
    turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
    if "問題を一つ作って" in prompt:
        return "問題：ある潜水士が深さ30メートルの海底まで毎分5メートルの速さで潜ります。海底に着くまで何分かかりますか。"
    if "追加の質問" in prompt:
        return f"速さが毎分{3 + turn}メートルに変わった場合、同じ深さまで何分かかりますか。"
    speed = 5 if turn == 0 else 3 + turn - 1
    return (f"30メートルを毎分{speed}メートルで割ると、30 ÷ {speed} = {30 / speed:g} となります。"
            f"したがって、海底に着くまでにかかる時間は{30 / speed:g}分です。\n答え：{30 / speed:g}分")


class ThreadedSite:
    """An aiohttp app on 127.0.0.1: `await start_async()` inside a running loop, or `with site:`
    to serve it from a thread of its own while a synchronous test or benchmark runs."""

    def __init__(self, port: int = 0, backlog: int = 128) -> None:
        self.port = port
        self._backlog = backlog
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start_async(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=self._backlog)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Self:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop_async())

        self._thread = threading.Thread(target=serve, daemon=True, name=type(self).__name__)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


class LoopbackServer(ThreadedSite):
    def __init__(self, responder: Responder = japanese_responder, *, latency: float = 0.0,
                 port: int = 0, model: str = "loopback-model") -> None:
        super().__init__(port, backlog=4096)
        self.responder = responder
        self.latency = latency
        self.model = model
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.keep_bodies = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests += 1
        if self.keep_bodies:
            self.bodies.append(body)
        if self.latency:
            await asyncio.sleep(self.latency)
        out = self.responder(body)
        reply = out if isinstance(out, Reply) else Reply(text=out)
        if reply.hang:
            await asyncio.sleep(reply.hang)
        if reply.raw is not None or reply.status != 200:
            return web.Response(status=reply.status, body=reply.raw or b'{"error": "injected"}',
                                headers=reply.headers, content_type="application/json")
        completion = len(reply.text) // 2 + 1
        payload = {
            "id": f"cmpl-{self.requests}", "object": "chat.completion", "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion},
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")


@contextlib.asynccontextmanager
async def loopback_site(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """A plain HTTP host on 127.0.0.1 (`GET /{name}` -> `handle`) standing in for the outside
    world in tests (image URLs, hostile pages); yields its base URL."""
    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="loopback OpenAI-compatible server (127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    server = LoopbackServer(latency=args.latency)
    web.run_app(server.app(), host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
