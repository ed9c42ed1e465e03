"""Micro-batching for in-process models: many concurrent `chat` calls, one `generate`.

In-process engines (transformers, vllm offline) are fastest when fed whole batches, but
generators await one request at a time; this collects what arrives within a short window
(or until the batch is full) and runs it on one dedicated thread, so the event loop stays
free and the model is never entered from two threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from synthgen.engine.messages import ChatResult, Message


def _never() -> bool:
    return False


@dataclass(slots=True)
class LocalRequest:
    messages: list[Message]
    sampling: dict[str, Any]
    # Read from the model thread between decoding steps: a request whose caller went away
    # (record cancelled, job stopped) should not keep the model busy for hundreds of tokens.
    abandoned: Callable[[], bool] = _never


BatchFn = Callable[[list[LocalRequest]], list[ChatResult]]


class MicroBatcher:
    def __init__(self, run_batch: BatchFn, *, max_batch: int = 16, max_wait: float = 0.02,
                 thread_name: str = "synthgen-model") -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: asyncio.Queue[tuple[LocalRequest, asyncio.Future[ChatResult]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._closing = threading.Event()

    def should_stop(self, batch: list[LocalRequest]) -> bool:
        """True once the engine is closing or every caller in the batch has gone away."""
        return self._closing.is_set() or all(r.abandoned() for r in batch)

    async def submit(self, messages: list[Message], sampling: dict[str, Any]) -> ChatResult:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._loop())
        fut: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((LocalRequest(messages, sampling, fut.cancelled), fut))
        return await fut

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            deadline = loop.time() + self._max_wait
            while len(pending) < self._max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            pending = [(req, fut) for req, fut in pending if not fut.cancelled()]
            # One generate call takes one set of sampling parameters.
            groups: dict[bytes, list[tuple[LocalRequest, asyncio.Future[ChatResult]]]] = {}
            for req, fut in pending:
                groups.setdefault(orjson.dumps(req.sampling, option=orjson.OPT_SORT_KEYS), []).append((req, fut))
            for group in groups.values():
                try:
                    results = await loop.run_in_executor(self._executor, self._run_batch, [r for r, _ in group])
                except Exception as exc:  # a batch failure fails its requests, not the worker
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), res in zip(group, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)

    async def aclose(self) -> None:
        self._closing.set()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
            self._queue = None

    def run_in_model_thread(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)


def truncate_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Cut at the first stop string, as servers do; reports whether one was found."""
    if not stop:
        return text, False
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
