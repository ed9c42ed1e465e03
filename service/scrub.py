"""Secrets and server paths out of everything a job stores or the API shows.

A model server that echoes request headers puts `Bearer <key>` into an error message; an
exception names a file by its absolute path; a trainer's log holds tracebacks. What the API
returns and what stays on disk after a job passes through here first.

The engine masks secrets in the failure records it writes (`synthgen.redact`), so no run
file needs scrubbing after the fact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from synthgen.redact import redact

MAX_ERROR_CHARS = 2000
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')


def scrub_text(text: str, secrets: Iterable[str] = (), roots: Iterable[Path | str] = (), *,
               limit: int | None = MAX_ERROR_CHARS) -> str:
    """`text` with known secrets, token-shaped strings and absolute server roots masked."""
    text = redact(text, secrets)
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


def private_tree(path: Path) -> None:
    """Folders 0700 and files 0600 below `path` (for a tree created before the umask was set)."""
    for folder, _dirs, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                os.chmod(p, 0o600)
