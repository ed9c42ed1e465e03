"""Bearer API keys, compared in constant time; no keys configured = open (local use)."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

COOKIE = "synthgen_key"
bearer = HTTPBearer(auto_error=False, description="an API key from SYNTHGEN_API_KEYS")


def key_ok(request: Request, presented: str | None) -> bool:
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return True
    if not presented:
        return False
    given = presented.encode()
    ok = False
    for key in keys:  # no early exit: time does not depend on which key matched
        ok |= hmac.compare_digest(given, key)
    return ok


def presented_key(request: Request, creds: HTTPAuthorizationCredentials | None) -> str | None:
    if creds is not None and creds.scheme.lower() == "bearer":
        return creds.credentials
    # The dashboard's login cookie, for reads only: a cookie never authorises a write.
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(COOKIE)
    return None


async def require_api_key(request: Request,
                          creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    if not key_ok(request, presented_key(request, creds)):
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
