"""Fetch images by URL for sources that hold links instead of pictures.

One shared aiohttp session for the run (opened as the generator's `resources`), a cap on
concurrent downloads, a timeout per attempt, a byte cap checked against Content-Length and
again while streaming, and a few retries with jittered backoff for the failures that are
worth retrying (connection errors, timeouts, 5xx, 429). A dead link fails its record only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from synthgen.engine.plugin import Skip

USER_AGENT = "synthgen-image-fetch/1"


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
            async with asyncio.timeout(limits.timeout), self._session.get(url, allow_redirects=True) as resp:
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
        except aiohttp.ClientError as exc:
            raise DownloadFailed("download_connection", f"{type(exc).__name__}: {url[:200]}") from None


def _retryable(reason: str) -> bool:
    if reason in ("download_timeout", "download_connection", "download_http_429"):
        return True
    return reason.startswith("download_http_5")


@asynccontextmanager
async def open_downloader(limits: DownloadLimits = DownloadLimits()) -> AsyncIterator[Downloader]:
    connector = aiohttp.TCPConnector(limit=limits.concurrency, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}) as session:
        yield Downloader(session, limits)
