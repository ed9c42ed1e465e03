"""`synthgen train --config FILE`: a plain function plus a typer-compatible wrapper.

The lead wires `train_command` into service/cli.py (`app.command("train")(train_command)`).
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from synthgen.trainer.config import load_config
from synthgen.trainer.progress import write_status

log = logging.getLogger("synthgen.trainer")


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())


def train_main(config: Path, overrides: list[str]) -> int:
    """Run every stage of the config; 0 on success, 2 on a bad config, 1 on a failed run, 130 on cancel."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        cfg = load_config(Path(config), overrides)
    except ValidationError as exc:
        print(f"error: invalid training config: {_describe(exc)}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from synthgen.trainer.train import Cancelled, run_training

    run_dir = cfg.resolved_run_dir()
    try:
        run_training(cfg)
    except Cancelled:
        log.warning("cancelled; the last checkpoint is kept for resume")
        return 130
    except Exception as exc:
        traceback.print_exc()
        write_status(run_dir, state="failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def train_command(
    config: Annotated[Path, typer.Option("--config", "-c", exists=True, dir_okay=False,
                                         help="training config (YAML or TOML)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. stages.0.max_steps=100")] = None,
) -> None:
    """Train a LLaVA-style VLM on synthgen datasets (both stages, see docs/training.md)."""
    code = train_main(config, overrides or [])
    if code:
        raise typer.Exit(code)
