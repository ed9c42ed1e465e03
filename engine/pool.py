"""Endpoint pools: one role served by several OpenAI-compatible servers (one vLLM per GPU or node).

Why least-outstanding and not round robin: generation lengths vary by 10x, so round robin
piles long requests onto one server while another idles; counting requests in flight per
endpoint sends each new request to the server with the most free batch slots, which is what
keeps every GPU busy (vLLM's own data-parallel balancing leaves some idle under skew).

Why take endpoints out: a dead server answers "connection refused" in microseconds, so
least-outstanding would otherwise pour every request into it. After `fail_threshold`
consecutive failures (connection errors, timeouts, 5xx) an endpoint is *down* for a cooldown;
then exactly one live request is let through as a probe (*half-open*). A probe that succeeds
puts it back; one that fails doubles the cooldown (capped). 4xx answers and 429 say the server
is alive, so they never count against it (429 is the role's admission's business).

Hot path: `choose` and `release` take one uncontended `threading.Lock` (~0.1 µs) and scan a
handful of endpoints; no awaits, no allocation beyond the call. The lock makes a pool safe to
share between threads; inside one event loop it is never contended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from synthgen.engine.errors import RequestError
from synthgen.engine.messages import ChatResult, Message

log = logging.getLogger(__name__)
UP, DOWN, PROBING = "up", "down", "probing"


def counts_against(reason: str | None) -> bool:
    """Whether a failed request says the endpoint is unwell (rather than the request bad)."""
    if reason is None:
        return False
    if reason in ("connection", "timeout", "bad_response"):
        return True
    if reason.startswith("http_"):
        try:
            return int(reason[5:]) >= 500
        except ValueError:
            return False
    return False


@dataclass(eq=False)
class Endpoint:
    """One server of a pool, with its live counters (read them; the pool writes them)."""

    url: str
    index: int
    outstanding: int = 0
    state: str = UP
    streak: int = 0  # consecutive failures that count against it
    retry_at: float = 0.0  # when a down endpoint may be probed
    cooldown: float = 0.0
    requests: int = 0
    failures: int = 0
    taken_out: int = 0
    client: Any = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "state": self.state, "outstanding": self.outstanding,
                "requests": self.requests, "failures": self.failures, "taken_out": self.taken_out}


class EndpointPool:
    def __init__(self, urls: Sequence[str], *, fail_threshold: int = 3, cooldown: float = 5.0,
                 max_cooldown: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("an endpoint pool needs at least one base URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"an endpoint pool lists a base URL twice: {list(urls)}")
        self.endpoints = [Endpoint(u, i) for i, u in enumerate(urls)]
        self.fail_threshold = fail_threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0  # rotates ties, so equal endpoints share load at low concurrency

    def choose(self, avoid: Endpoint | None = None) -> Endpoint:
        """The up endpoint with the fewest requests in flight; a due down endpoint as a probe.

        `avoid` (the endpoint a request just failed on) is passed over while another will do.
        With every endpoint down the one due soonest is used anyway: the role's retries and
        backoff then pace the traffic, as they would with a single server.
        """
        endpoints = self.endpoints
        count = len(endpoints)
        with self._lock:
            start = self._turn = (self._turn + 1) % count
            best: Endpoint | None = None
            now = -1.0
            for i in range(count):
                ep = endpoints[(start + i) % count]
                if ep is avoid:
                    continue
                if ep.state == UP:
                    if best is None or ep.outstanding < best.outstanding:
                        best = ep
                elif ep.state == DOWN:
                    if now < 0:
                        now = self._clock()
                    if now >= ep.retry_at:  # half-open: this request is its probe
                        ep.state = PROBING
                        best = ep
                        break
            if best is None:  # all down or probing (or only `avoid` is up)
                best = min(endpoints, key=lambda e: (e is avoid and e.state != UP, e.state == PROBING,
                                                     e.state != UP, e.retry_at, e.outstanding))
            best.outstanding += 1
            best.requests += 1
            return best

    def release(self, ep: Endpoint, ok: bool | None, error_kind: str | None = None) -> None:
        """Hand back a request. ok=True/False: its outcome; None: abandoned (cancelled).

        `error_kind` is the RequestError reason; only those `counts_against` the endpoint
        move it towards being taken out. Take-outs and take-backs are logged (rare events).
        """
        with self._lock:
            ep.outstanding -= 1
            if ok is None:
                if ep.state == PROBING:  # the probe never finished: probe again on the next choice
                    ep.state = DOWN
                return
            if ok or not counts_against(error_kind):
                ep.streak = 0
                if ep.state == UP:
                    return
                ep.state = UP
                ep.cooldown = 0.0
                event = "back"
            else:
                ep.failures += 1
                ep.streak += 1
                if ep.state == PROBING:
                    ep.cooldown = min(self.max_cooldown, max(self.base_cooldown, ep.cooldown * 2))
                elif ep.state == UP and ep.streak >= self.fail_threshold:
                    ep.cooldown = self.base_cooldown
                else:
                    return
                self._take_out(ep)
                event = "out"
        if event == "out":
            log.warning("endpoint %s taken out after %s (%d failures in a row); probed again in %.0f s",
                        ep.url, error_kind, ep.streak, ep.cooldown)
        else:
            log.info("endpoint %s answers again: back in the pool", ep.url)

    def _take_out(self, ep: Endpoint) -> None:
        ep.state = DOWN
        ep.retry_at = self._clock() + ep.cooldown
        ep.taken_out += 1

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [ep.as_dict() for ep in self.endpoints]


class PooledClient:
    """A ChatClient over an EndpointPool: one `complete` goes to the pool's choice.

    `make_client(url)` builds the per-endpoint client (an OpenAIHTTPClient). A connection
    error means the request never reached a server, so it is resent at once to another
    endpoint (at most once per other endpoint) instead of waiting out the role's backoff;
    every other failure is raised for the role's retry policy.
    """

    def __init__(self, pool: EndpointPool, make_client: Callable[[str], Any], model: str) -> None:
        self.pool = pool
        self.model = model
        for ep in pool.endpoints:
            ep.client = make_client(ep.url)

    @classmethod
    def openai(cls, urls: Sequence[str], model: str, *, api_key: str | None = None,
               extra_body: dict[str, Any] | None = None, **pool_options: Any) -> PooledClient:
        from synthgen.engine.openai_http import OpenAIHTTPClient

        return cls(EndpointPool([u.rstrip("/") for u in urls], **pool_options),
                   lambda url: OpenAIHTTPClient(url, model, api_key=api_key, extra_body=extra_body), model)

    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult:
        pool = self.pool
        hops = len(pool.endpoints)
        failed: Endpoint | None = None
        while True:
            ep = pool.choose(failed)
            try:
                result = await ep.client.complete(messages, sampling, timeout)
            except RequestError as exc:
                pool.release(ep, False, exc.reason)
                hops -= 1
                if exc.reason == "connection" and hops > 0:
                    failed = ep
                    continue
                raise
            except BaseException:
                pool.release(ep, None)
                raise
            pool.release(ep, True)
            return result

    async def aclose(self) -> None:
        for ep in self.pool.endpoints:
            await ep.client.aclose()

