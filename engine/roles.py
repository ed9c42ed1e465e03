"""Model roles: the one call a generator makes, `await role.chat(messages)`.

Admission (a semaphore per role), retries with backoff, timeouts and usage accounting
all live here, so plugins never see HTTP and every engine behaves the same under load.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from synthgen.engine import backends
from synthgen.engine.admission import AdaptiveLimit
from synthgen.engine.backends import ChatClient
from synthgen.engine.errors import RequestError
from synthgen.engine.messages import ChatResult, Message
from synthgen.engine.snapshot import Usage
from synthgen.spec import DEFAULT_ROLE, JobSpec, RoleConfig

DEFAULTS = RoleConfig(engine="openai", concurrency=256, timeout=120.0, max_attempts=6, temperature=0.7,
                      max_tokens=1024)


def backoff_seconds(attempt: int, exc: BaseException | None) -> float:
    """Exponential backoff with full jitter, but never sooner than the server's Retry-After."""
    wait = random.uniform(0, min(30.0, 0.5 * 2 ** (attempt - 1)))
    if isinstance(exc, RequestError) and exc.retry_after is not None:
        wait = max(wait, exc.retry_after)
    return wait


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, RequestError) and exc.retryable


class Role:
    def __init__(self, name: str, config: RoleConfig, client: ChatClient) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.model = config.model or client.model
        self.usage = Usage(model=self.model)
        self._sampling = config.sampling()
        self._timeout = float(config.timeout or DEFAULTS.timeout or 120.0)
        self.admission = AdaptiveLimit(config.concurrency or DEFAULTS.concurrency or 256)
        self._attempts = config.max_attempts or DEFAULTS.max_attempts or 6
        # In-process backends cannot time a request out themselves: the role does it for them.
        self._guard_timeout = not backends.get(config.engine or "openai").own_timeout

    def _count_retry(self, _state: Any) -> None:
        self.usage.retries += 1

    async def chat(self, messages: list[Message], **sampling: Any) -> ChatResult:
        """One completion; per-call sampling overrides the role's. Raises RequestError when spent."""
        params = {**self._sampling, **{k: v for k, v in sampling.items() if v is not None}}
        usage = self.usage
        start = time.perf_counter()
        try:
            result = await self._with_retries(messages, params)
        except RequestError as exc:
            usage.failed += 1
            usage.failures_by_reason[exc.reason] = usage.failures_by_reason.get(exc.reason, 0) + 1
            raise
        usage.requests += 1
        usage.prompt_tokens += result.prompt_tokens
        usage.completion_tokens += result.completion_tokens
        usage.latency_s += time.perf_counter() - start
        return result

    async def _with_retries(self, messages: list[Message], params: dict[str, Any]) -> ChatResult:
        """First attempt inline (the common case costs nothing extra); tenacity for the rest."""
        try:
            return await self._once(messages, params)
        except RequestError as exc:
            if not exc.retryable or self._attempts <= 1:
                raise
            self.usage.retries += 1
            await asyncio.sleep(backoff_seconds(1, exc))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts - 1),
            wait=lambda s: backoff_seconds(s.attempt_number + 1, s.outcome.exception() if s.outcome else None),
            retry=retry_if_exception(_retryable), reraise=True, before_sleep=self._count_retry,
        )
        return await retrying(self._once, messages, params)

    async def _once(self, messages: list[Message], params: dict[str, Any]) -> ChatResult:
        admission = self.admission
        await admission.acquire()
        try:
            if self._guard_timeout:
                try:
                    async with asyncio.timeout(self._timeout):
                        result = await self.client.complete(messages, params, self._timeout)
                except TimeoutError:
                    raise RequestError("timeout", f"no answer in {self._timeout:g}s", retryable=True) from None
            else:
                result = await self.client.complete(messages, params, self._timeout)
        except RequestError as exc:
            if exc.reason == "http_429":
                admission.overloaded()
            raise
        finally:
            admission.release()
        admission.succeeded()
        return result


def resolve_roles(configured: Mapping[str, RoleConfig], needed: tuple[str, ...]) -> dict[str, RoleConfig]:
    """Layer DEFAULTS < the `default` entry < each role's own entry, for every role needed.

    With no endpoint anywhere the embedded smoke-test model serves every role, so a fresh
    install can run a generator end to end without a server.
    """
    unknown = set(configured) - set(needed) - {DEFAULT_ROLE}
    if unknown:
        raise ValueError(f"config names roles this generator does not use: {sorted(unknown)} (it uses {list(needed)})")
    base = configured.get(DEFAULT_ROLE, RoleConfig())
    resolved = {}
    for role in needed:
        cfg = configured.get(role, RoleConfig()).merged_over(base)
        if cfg.engine is None:
            cfg = cfg.model_copy(update={"engine": "openai" if cfg.base_url else "transformers"})
        backend = backends.get(cfg.engine)  # UnknownBackend (a LookupError) names the registered ones
        if backend.default_concurrency and not cfg.concurrency:
            cfg = cfg.model_copy(update={"concurrency": backend.default_concurrency})
        cfg = cfg.merged_over(DEFAULTS.model_copy(update={"engine": cfg.engine}))
        if backend.check:
            backend.check(role, cfg)
        resolved[role] = cfg
    return resolved


SMOKE_MAX_TOKENS = 160


def uses_smoke_model(resolved: Mapping[str, RoleConfig]) -> bool:
    return any(c.engine == "transformers" and not c.model for c in resolved.values())


def with_smoke_defaults(spec: JobSpec, resolved: Mapping[str, RoleConfig]) -> JobSpec:
    """On the embedded smoke-test model replies default to 160 tokens, so a first job on a CPU
    ends in minutes rather than generating 1024-token answers. CLI and API both apply it."""
    base = spec.roles.get(DEFAULT_ROLE) or RoleConfig()
    if not uses_smoke_model(resolved) or base.max_tokens is not None:
        return spec
    capped = base.model_copy(update={"max_tokens": SMOKE_MAX_TOKENS})
    return spec.model_copy(update={"roles": {**spec.roles, DEFAULT_ROLE: capped}})


def _client_key(cfg: RoleConfig) -> tuple[Any, ...]:
    secret = cfg.api_key.get_secret_value() if cfg.api_key else None
    return (cfg.engine, tuple(cfg.endpoints()), cfg.model, secret, repr(sorted(cfg.options.items())))


def make_client(cfg: RoleConfig) -> ChatClient:
    return backends.get(cfg.engine or "openai").make(cfg)


def build_roles(resolved: Mapping[str, RoleConfig]) -> dict[str, Role]:
    """Roles that point at the same engine and model share one client (one loaded model)."""
    clients: dict[tuple[Any, ...], ChatClient] = {}
    roles = {}
    for name, cfg in resolved.items():
        key = _client_key(cfg)
        if key not in clients:
            clients[key] = make_client(cfg)
        roles[name] = Role(name, cfg, clients[key])
    return roles


async def close_roles(roles: Mapping[str, Role]) -> None:
    seen: set[int] = set()
    for role in roles.values():
        if id(role.client) not in seen:
            seen.add(id(role.client))
            await role.client.aclose()
