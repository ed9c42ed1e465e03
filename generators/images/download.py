"""Fetch images by URL for sources that hold links instead of pictures.

One shared aiohttp session for the run (opened as the generator's `resources`), a cap on
concurrent downloads, a timeout per attempt, a byte cap checked against Content-Length and
again while streaming, and a few retries with jittered backoff for the failures that are
worth retrying (connection errors, timeouts, 5xx, 429). A dead link fails its record only.

Under a worker's policy (REST jobs) every connection, redirects included, goes only to
addresses the policy allows: private, loopback and link-local ranges are refused unless the
operator allows them. Names are checked as they resolve (a name that resolves to a public
address first and a private one later cannot slip through), IP literals before connecting,
and a refused URL fails with one reason whatever lies behind it, so failure counts reveal
nothing about the internal network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from synthgen import policy
from synthgen.engine.plugin import Skip

USER_AGENT = "synthgen-image-fetch/1"
MAX_REDIRECTS = 5


class DownloadFailed(Skip):
    """`reason` is `download_http_404`, `download_too_large`, `download_timeout`, ..."""


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    timeout: float = 20.0
    max_bytes: int = 30 * 1024 * 1024
    attempts: int = 3
    concurrency: int = 32


class Downloader:
    def __init__(self, session: aiohttp.ClientSession, limits: DownloadLimits) -> None:
        self._session = session
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.concurrency)

    async def fetch(self, url: str) -> bytes:
        if not url.startswith(("http://", "https://")):
            raise DownloadFailed("download_bad_url", url[:200])
        last: DownloadFailed | None = None
        for attempt in range(1, self._limits.attempts + 1):
            try:
                async with self._slots:
                    return await self._once(url)
            except DownloadFailed as exc:
                if not _retryable(exc.reason) or attempt == self._limits.attempts:
                    raise
                last = exc
            await asyncio.sleep(random.uniform(0, min(5.0, 0.25 * 2 ** attempt)))
        assert last is not None
        raise last

    async def _once(self, url: str) -> bytes:
        limits = self._limits
        try:
            async with asyncio.timeout(limits.timeout), self._get(url) as resp:
                if resp.status != 200:
                    raise DownloadFailed(f"download_http_{resp.status}", url[:200])
                if resp.content_length is not None and resp.content_length > limits.max_bytes:
                    raise DownloadFailed("download_too_large", f"{resp.content_length} bytes: {url[:200]}")
                chunks, size = [], 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise DownloadFailed("download_too_large", f"> {limits.max_bytes} bytes: {url[:200]}")
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError:
            raise DownloadFailed("download_timeout", f"{limits.timeout}s: {url[:200]}") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise DownloadFailed(REFUSED, url[:200]) from None
            raise DownloadFailed("download_connection", f"{type(exc).__name__}: {url[:200]}") from None
        except aiohttp.ClientError as exc:
            raise DownloadFailed("download_connection", f"{type(exc).__name__}: {url[:200]}") from None

    @asynccontextmanager
    async def _get(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET following up to MAX_REDIRECTS redirects, each hop checked like the first."""
        target = URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            _check_literal(target, url)
            async with self._session.get(target, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status in (301, 302, 303, 307, 308) and location:
                    target = target.join(URL(location))
                    if target.scheme not in ("http", "https"):
                        raise DownloadFailed("download_bad_url", url[:200])
                    continue
                yield resp
                return
        raise DownloadFailed("download_too_many_redirects", url[:200])


def _retryable(reason: str) -> bool:
    if reason in ("download_timeout", "download_connection", "download_http_429"):
        return True
    return reason.startswith("download_http_5")


REFUSED = "download_refused_by_policy"


class AddressRefused(OSError):
    """The policy does not allow connecting to any address this name resolves to."""


def _check_literal(target: URL, shown: str) -> None:
    active = policy.current()
    host = target.host or ""
    if active is None or not host:
        return
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host.rstrip(".").lower() in policy.LOOPBACK_NAMES and not active.allow_private_downloads:
            raise DownloadFailed(REFUSED, shown[:200]) from None
        return  # a name: PolicyResolver checks what it resolves to
    if not active.download_address_allowed(host.strip("[]")):
        raise DownloadFailed(REFUSED, shown[:200])


class PolicyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then keeps only the addresses the policy allows."""

    def __init__(self, rules: policy.Policy) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._rules = rules

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if self._rules.download_address_allowed(r["host"])]
        if not kept:
            raise AddressRefused(f"{host}: no address this server may download from")
        return kept

    async def close(self) -> None:
        await self._inner.close()


@asynccontextmanager
async def open_downloader(limits: DownloadLimits = DownloadLimits()) -> AsyncIterator[Downloader]:
    active = policy.current()
    resolver = PolicyResolver(active) if active is not None and not active.allow_private_downloads else None
    connector = aiohttp.TCPConnector(limit=limits.concurrency, ttl_dns_cache=300, resolver=resolver)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}) as session:
        yield Downloader(session, limits)
