"""Per-role admission: a concurrency limit that halves on overload and creeps back (AIMD).

A fixed semaphore keeps hammering a server that answers 429; halving the requests in flight
on overload and adding one back per window of successes lets a shared vLLM server settle at
what it can take, without a human tuning `concurrency` per server.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class AdaptiveLimit:
    def __init__(self, limit: int, *, cooldown: float = 1.0) -> None:
        self.max = limit
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._credit = 0
        self._cooldown = cooldown
        self._last_cut = 0.0

    async def acquire(self) -> None:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: hand the slot on
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)

    def overloaded(self) -> None:
        """Multiplicative decrease, at most once per cooldown (one burst of 429s = one cut)."""
        now = time.monotonic()
        if now - self._last_cut >= self._cooldown:
            self._last_cut = now
            self.limit = max(1, self.limit // 2)
            self._credit = 0

    def succeeded(self) -> None:
        """Additive increase: one more slot per `limit` successes."""
        if self.limit < self.max:
            self._credit += 1
            if self._credit >= self.limit:
                self._credit = 0
                self.limit += 1
                self._wake()

    async def __aenter__(self) -> AdaptiveLimit:
        await self.acquire()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.release()
