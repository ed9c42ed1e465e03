"""Evaluations as their own processes: the contract `POST /v1/evaluations` builds on.

Like the trainer's launch module: `start` writes the validated spec to run_dir/spec.json and
spawns `python -m synthgen.evaluator`; the process reports through run_dir/status.json (state,
samples done of total, the task it is on) and writes report.json / report.md / chart.png there
when it ends; `status` also notices a process that died without saying so; `cancel` sends
SIGTERM, which the process turns into state "cancelled".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from synthgen.evaluator.spec import EvalSpec
from synthgen.trainer.launch import alive, pid_in

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
PID_FILE = "pid"
LOG_FILE = "eval.log"
CANCEL_FILE = "cancel_requested"
START_GRACE_S = 30.0


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    current = read_status(run_dir)
    current.update(fields, updated_at=time.time())
    tmp = Path(run_dir) / f".{STATUS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(current, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, Path(run_dir) / STATUS_FILE)
    return current


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def start(spec: EvalSpec, run_dir: Path, secrets: dict[str, str] | None = None, wait_for: Path | None = None) -> int:
    """Write the spec (secrets masked) and spawn the evaluation; API keys travel in the child's
    environment only, never on disk. With `wait_for` (a training run folder) the process first
    waits for that training to succeed (state "waiting"), and fails if it does not."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SPEC_FILE).write_text(json.dumps(spec.public_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
    (run_dir / CANCEL_FILE).unlink(missing_ok=True)
    write_status(run_dir, state="waiting" if wait_for else "running", done=0, total=None, task=None, error=None,
                 label=spec.display_name(), created_at=time.time(), wait_for=str(wait_for) if wait_for else None)
    env = {**os.environ, **{f"SYNTHGEN_EVAL_{k.upper()}_API_KEY": v for k, v in (secrets or {}).items()}}
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "synthgen.evaluator", str(run_dir)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(run_dir),
                                start_new_session=True, env=env)
    (run_dir / PID_FILE).write_text(str(proc.pid))
    return proc.pid


def status(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    st = read_status(run_dir)
    state = st.get("state", "failed")
    pid = pid_in(run_dir)
    starting = pid is None and time.time() - float(st.get("updated_at") or 0) < START_GRACE_S
    if state in ("running", "waiting") and not starting and (pid is None or not alive(pid)):
        state = "cancelled" if (run_dir / CANCEL_FILE).exists() else "failed"
        st["error"] = st.get("error") or "the evaluation process exited without a result"
    return {**st, "state": state, "has_report": (run_dir / "report.json").exists()}


def cancel(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    (run_dir / CANCEL_FILE).touch()
    pid = pid_in(run_dir)
    if pid is not None and alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
