"""Request failures, classified once so retries, failure files and metrics agree on a reason."""

from __future__ import annotations


class RequestError(Exception):
    """A model request that failed; `reason` is a short slug such as `http_429` or `timeout`."""

    def __init__(self, reason: str, message: str = "", *, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


def http_error(status: int, body: str, retry_after: str | None) -> RequestError:
    """429 and 5xx are worth retrying (overload, restarts); any other 4xx never will be."""
    wait = _parse_retry_after(retry_after)
    retryable = status == 429 or status == 408 or status >= 500
    return RequestError(f"http_{status}", body[:300], retryable=retryable, retry_after=wait)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, min(float(value), 300.0))
    except ValueError:
        return None  # HTTP-date form: rare from model servers; fall back to backoff


class EngineUnavailable(RuntimeError):
    """An engine whose optional dependency is missing or whose model cannot load."""
