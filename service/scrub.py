"""Secrets and server paths out of everything a job stores or the API shows.

A model server that echoes request headers puts `Bearer <key>` into an error message; an
exception names a file by its absolute path; a trainer's log holds tracebacks. What the API
returns and what stays on disk after a job passes through here first.

`scrub_file` masks in place with the same number of bytes, so a file whose length another
component recorded (the engine's failures log and its progress marker) stays consistent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

MASK = "**********"
MAX_ERROR_CHARS = 2000
# Token shapes worth masking even when the exact secret is not known to us.
_PATTERNS = [
    re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9._~+/=-]{6,})"),
    re.compile(r"(?i)(\bbasic\s+)([A-Za-z0-9+/=]{6,})"),
    re.compile(r"()\b(hf_[A-Za-z0-9]{10,})"),
    re.compile(r"()\b(sk-[A-Za-z0-9_-]{10,})"),
    re.compile(r"(?i)((?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]{6,})"),
]
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')


def scrub_text(text: str, secrets: Iterable[str] = (), roots: Iterable[Path | str] = (), *,
               limit: int | None = MAX_ERROR_CHARS) -> str:
    """`text` with known secrets, token-shaped strings and absolute server roots masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    for root in sorted({str(r) for r in roots if str(r) not in ("", "/")}, key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, ".")
    if limit is not None and len(text) > limit:
        text = text[:limit] + " …"
    return text


def scrub_log(text: str, roots: Iterable[Path | str] = (), secrets: Iterable[str] = ()) -> str:
    """A log tail for the API: traceback frames (file paths and source lines) dropped, the
    exception line kept, secrets and roots masked."""
    kept: list[str] = []
    skip_source = False
    for line in text.splitlines():
        if _FRAME.match(line):
            skip_source = True
            continue
        if skip_source and line.startswith("    "):
            skip_source = False
            continue
        skip_source = False
        kept.append(line)
    return scrub_text("\n".join(kept), secrets, roots, limit=None)


def _mask_same_length(data: bytes, secrets: Iterable[str]) -> bytes:
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret.encode(), secret.encode("unicode_escape")}:
            if form:
                data = data.replace(form, b"*" * len(form))
    for pattern in _PATTERNS:
        bpattern = re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE)
        data = bpattern.sub(lambda m: m.group(1) + b"*" * len(m.group(2)), data)
    return data


def scrub_file(path: Path, secrets: Iterable[str] = ()) -> bool:
    """Mask secrets in `path` in place, same length; True when something was masked."""
    try:
        with open(path, "r+b") as fh:
            data = fh.read()
            masked = _mask_same_length(data, list(secrets))
            if masked == data:
                return False
            fh.seek(0)
            fh.write(masked)
            fh.flush()
            os.fsync(fh.fileno())
    except (FileNotFoundError, IsADirectoryError):
        return False
    return True


def failure_logs(out: Path) -> list[Path]:
    """A run folder's failure logs (the engine's failures.jsonl and any per-shard ones)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.rglob("*failures*.jsonl") if p.is_file())


def scrub_run(out: Path, secrets: Iterable[str] = ()) -> int:
    """Mask secrets in every failure log of a run folder; returns how many files changed.

    For the engine to call as it writes too (`scrub_text` per message); the worker calls
    this when a job's run ends, before the job is marked finished."""
    secrets = list(secrets)
    return sum(scrub_file(p, secrets) for p in failure_logs(out))


def private_tree(path: Path) -> None:
    """Folders 0700 and files 0600 below `path` (for a tree created before the umask was set)."""
    for folder, _dirs, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                os.chmod(p, 0o600)
