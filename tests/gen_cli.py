"""The generator tests' way through the real CLI: run, and kill-midway-then-resume to exactly n."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from synthgen.engine.runs import NotARun, open_run

CLI = [sys.executable, "-m", "synthgen.service.cli"]
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def _written(out: Path) -> int:
    try:
        return open_run(out).count_rows()
    except (NotARun, FileNotFoundError, ValueError):
        return 0


def kill_then_resume(args: list[str], out: Path, *, kill_after: int) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Start `synthgen run ARGS` slowly, SIGKILL it once `kill_after` rows are on disk, resume it.

    Returns the rows written before the kill and the resumed process; the caller checks both.
    """
    proc = subprocess.Popen([*CLI, *args, "--concurrency", "2", "--set", "flush_seconds=0.2", "--set",
                             "shard_rows=2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if _written(out) >= kill_after:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    written = _written(out)
    again = run_cli(*args, "--concurrency", "16", "--resume")
    return written, again
