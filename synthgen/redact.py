"""Secrets out of text that gets stored or shown: the known secret values of a job, and
token-shaped strings (a model server that echoes request headers puts `Bearer <key>` into its
error body). No I/O, so the engine (failure records), the service (job errors, logs) and the
trainer can all use it."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "**********"
# Token shapes worth masking even when the exact secret is not known to us.
PATTERNS = [
    re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9._~+/=-]{6,})"),
    re.compile(r"(?i)(\bbasic\s+)([A-Za-z0-9+/=]{6,})"),
    re.compile(r"()\b(hf_[A-Za-z0-9]{10,})"),
    re.compile(r"()\b(sk-[A-Za-z0-9_-]{10,})"),
    re.compile(r"(?i)((?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]{6,})"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secrets and token-shaped strings masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text
