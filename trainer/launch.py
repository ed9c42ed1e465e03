"""Training jobs as separate processes: the contract the REST service builds on.

`start` writes the validated config into run_dir and spawns `python -m synthgen.trainer`; the
trainer reports through run_dir/status.json (see progress.py); `status` reads it and notices a
process that died without saying so; `cancel` asks the trainer to stop (SIGTERM: it checkpoints at
the next step and exits with state "cancelled").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from synthgen.trainer.config import TrainConfig
from synthgen.trainer.progress import CANCEL_FILE, LOG_FILE, PID_FILE, read_status, write_status

CONFIG_FILE = "config.yaml"
LOG_TAIL_LINES = 40
START_GRACE_S = 30.0


def validate_config(config: dict) -> TrainConfig:
    """Raises pydantic.ValidationError on a bad config."""
    return TrainConfig.model_validate(config)


def start(config: dict, run_dir: Path) -> int:
    """Validate, write run_dir/config.yaml, spawn the trainer with logs to run_dir/train.log; returns its pid."""
    cfg = validate_config(config)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
    cfg_path = run_dir / CONFIG_FILE
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False),
                        encoding="utf-8")
    (run_dir / CANCEL_FILE).unlink(missing_ok=True)
    write_status(run_dir, state="running", stage=None, step=0, total_steps=None, loss=None,
                 output_dir=cfg.output_dir, error=None)
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "synthgen.trainer", "--config", str(cfg_path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(run_dir), start_new_session=True)
    (run_dir / PID_FILE).write_text(str(proc.pid))
    return proc.pid


def pid_in(run_dir: Path) -> int | None:
    """The pid a launcher wrote into `run_dir` (trainings and evaluations alike), or None."""
    try:
        return int((run_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Running, not a zombie; reaps it when it is our child."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie of another parent is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    return True


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def status(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    st = read_status(run_dir)
    state = st.get("state", "failed" if not st else "running")
    pid = pid_in(run_dir)
    starting = pid is None and time.time() - float(st.get("updated_at") or 0) < START_GRACE_S  # pid not written yet
    if state == "running" and not starting and (pid is None or not alive(pid)):
        state = "cancelled" if (run_dir / CANCEL_FILE).exists() else "failed"
    return {"state": state, "stage": st.get("stage"), "step": st.get("step", 0),
            "total_steps": st.get("total_steps"), "loss": st.get("loss"),
            "log_tail": _tail(run_dir / LOG_FILE), "output_dir": st.get("output_dir"),
            "error": st.get("error"), "pid": pid}


def cancel(run_dir: Path) -> None:
    """Ask the trainer to stop; returns at once. status() says "cancelled" once it has exited."""
    run_dir = Path(run_dir)
    (run_dir / CANCEL_FILE).touch()
    pid = pid_in(run_dir)
    if pid is not None and alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
