"""`python -m synthgen.evaluator RUN_DIR`: run the evaluation whose spec is in RUN_DIR (see launch.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from synthgen.evaluator.launch import SPEC_FILE, write_status
from synthgen.evaluator.spec import EvalSpec


def _with_secrets(data: dict) -> dict:
    """Put back the API keys the launcher passed through the environment (the spec on disk is masked)."""
    for role in ("model", "judge"):
        key = os.environ.get(f"SYNTHGEN_EVAL_{role.upper()}_API_KEY")
        if data.get(role) is not None:
            data[role].pop("api_key", None)
            if key:
                data[role]["api_key"] = key
    return data


async def _wait_for_training(run_dir: Path, training_dir: Path, poll_s: float = 2.0) -> None:
    """A chained evaluation: wait until the training run ends; go on only if it succeeded."""
    from synthgen.trainer import launch as train_launch

    while True:
        st = await asyncio.to_thread(train_launch.status, training_dir)
        if st["state"] == "succeeded":
            write_status(run_dir, state="running")
            return
        if st["state"] in ("failed", "cancelled"):
            raise RuntimeError(f"the training it waits for ended {st['state']}: {st.get('error') or ''}".strip())
        await asyncio.sleep(poll_s)


async def _run(spec: EvalSpec, run_dir: Path) -> None:
    from synthgen.evaluator.launch import read_status
    from synthgen.evaluator.runner import evaluate

    last = [0.0]

    def progress(p: dict) -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 or p["done"] == p["total"]:
            last[0] = now
            write_status(run_dir, **p)

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    wait_for = read_status(run_dir).get("wait_for")
    if wait_for:
        await _wait_for_training(run_dir, Path(wait_for))
    await evaluate(spec, run_dir, progress)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = Path(argv[0]).resolve()
    try:
        data = _with_secrets(json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8")))
        spec = EvalSpec.model_validate(data)
        asyncio.run(_run(spec, run_dir))
    except (asyncio.CancelledError, KeyboardInterrupt):
        write_status(run_dir, state="cancelled")
        return 130
    except Exception as exc:
        traceback.print_exc()
        write_status(run_dir, state="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        return 1
    write_status(run_dir, state="succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
