"""`python -m synthgen.trainer --config FILE [KEY=VALUE ...]`: what launch.start spawns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthgen.trainer.cli import train_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthgen.trainer")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE, e.g. stages.0.max_steps=10")
    args = parser.parse_args(argv)
    return train_main(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
