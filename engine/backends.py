"""Backends are plugins, like generators: the `synthgen.backends` entry-point group.

One contract for all of them: messages and sampling in; text, token usage and a finish
reason out (`ChatResult`); a timeout and cancellation honoured. The engine puts the same
admission, retries and usage accounting around every backend (`roles.Role`), so a new
backend is one module with a `backend = Backend(...)` value plus one entry point:

    [project.entry-points."synthgen.backends"]
    my-server = "my_package.my_module:backend"

`openai` (HTTP to vLLM or any compatible server), `openai-batch` (the Batch API at half
price), `transformers` and `vllm` (in-process) are registered the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

from synthgen.engine.messages import ChatResult, Message
from synthgen.spec import RoleConfig

ENTRY_POINT_GROUP = "synthgen.backends"


class ChatClient(Protocol):
    """What a backend's factory returns. `complete` raises `errors.RequestError` with a reason
    slug on failure (retryable or not) and must stop promptly when its task is cancelled."""

    model: str

    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    # Builds the client for one resolved role config (roles with equal configs share it).
    make: Callable[[RoleConfig], ChatClient]
    # Raises ValueError naming what a role config lacks (e.g. base_url), before anything loads.
    check: Callable[[str, RoleConfig], None] | None = None
    # Runs the model inside this process (loads weights, may run code): never chosen by a REST
    # client unless the operator allows it.
    in_process: bool = False
    # The client enforces `timeout` itself (an HTTP client does); otherwise the role wraps
    # each call in asyncio.timeout so a hung in-process generation still ends.
    own_timeout: bool = False
    # Records in flight when the role sets no concurrency.
    default_concurrency: int | None = None


class UnknownBackend(LookupError, ValueError):
    """A LookupError, and a ValueError so spec validation at every interface reports it as one."""



@cache
def _registered() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    return sorted(_registered())


@cache
def get(name: str) -> Backend:
    eps = _registered()
    if name not in eps:
        raise UnknownBackend(f"unknown engine {name!r} (registered: {', '.join(sorted(eps)) or 'none'})")
    try:
        backend = eps[name].load()
    except Exception as exc:
        raise UnknownBackend(f"engine {name!r} is registered but failed to load: {exc}") from exc
    if not isinstance(backend, Backend):
        raise UnknownBackend(f"entry point {name!r} ({eps[name].value}) is not a synthgen Backend")
    return backend
