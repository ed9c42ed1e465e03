"""DNS rebinding guard: with no API keys configured, only requests addressed to a loopback
name (or a host the operator allows) are served.

Without keys anyone who can reach the port may call the API; that is the single-machine
default, bound to 127.0.0.1. A web page the user opens could still reach it by making its own
domain resolve to 127.0.0.1 (DNS rebinding); the browser then sends that domain as Host, which
this check refuses. With keys configured a rebinding page has no key, so the check is not needed.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# "testserver" is Starlette's TestClient default: a single-label name no public DNS serves.
ALWAYS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "testserver"})
# Health checks answer whatever Host a load balancer or orchestrator probe sends (a pod IP):
# they reveal nothing a rebinding page could use.
OPEN_PATHS = frozenset({"/healthz", "/v1/healthz"})


def host_of(header: str) -> str:
    """`Host` without its port, lower-case, IPv6 brackets removed."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def loopback(host: str) -> bool:
    if host in ALWAYS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostCheck:
    """Pure ASGI middleware; active only while the app has no API keys."""

    def __init__(self, app: ASGIApp, allowed: list[str], enabled: bool) -> None:
        self.app = app
        self.allowed = {host_of(h) for h in allowed if h}
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] in ("http", "websocket") and scope.get("path") not in OPEN_PATHS:
            header = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
            if header is not None:
                host = host_of(header.decode("latin-1"))
                if not (loopback(host) or host in self.allowed):
                    await JSONResponse({"detail": "Host not allowed: serve with API keys (SYNTHGEN_API_KEYS) "
                                                  "or add it to SYNTHGEN_ALLOWED_HOSTS"}, 400)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
