"""Output folders stay under the data root: no absolute paths elsewhere, no `..` escapes."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class PathEscape(ValueError):
    pass


def confine(out: str | None, data_root: Path, job_id: str) -> Path:
    """The job's output folder as an absolute path inside `data_root`."""
    root = data_root.resolve()
    if not out:
        return root / "jobs" / job_id
    if "\x00" in out or len(out) > 500:
        raise PathEscape("out must be a plain relative path under the data root")
    raw = Path(out)
    if ".." in PurePosixPath(out).parts or ".." in raw.parts:
        raise PathEscape("out must not contain '..'")
    candidate = raw if raw.is_absolute() else root / raw
    resolved = candidate.resolve()  # follows symlinks, so a link out of the root is caught too
    if resolved == root or not resolved.is_relative_to(root):
        raise PathEscape("out must be a folder inside the data root")
    return resolved
