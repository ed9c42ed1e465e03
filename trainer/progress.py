"""run_dir/status.json: the one file the trainer writes for anyone watching (CLI, REST service).

Written atomically (temp file + os.replace) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
CANCEL_FILE = "cancel_requested"
PID_FILE = "pid"
LOG_FILE = "train.log"
STATES = ("running", "succeeded", "failed", "cancelled")


def is_main_process() -> bool:
    """Rank 0 under torchrun/accelerate launch (or a single process): the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into status.json; keeps keys not given (e.g. total_steps between stages).

    Only the main process writes; other ranks' calls are no-ops.
    """
    if not is_main_process():
        return fields
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    current = read_status(run_dir)
    current.update(fields)
    current["updated_at"] = time.time()
    tmp = run_dir / f".{STATUS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(current, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, run_dir / STATUS_FILE)
    return current


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def cancel_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / CANCEL_FILE).exists()
