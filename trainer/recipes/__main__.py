"""`python -m synthgen.trainer.recipes list | show NAME | tiny NAME OUT [--steps N] [--lm-family F]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthgen.trainer import recipes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthgen.trainer.recipes", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the shipped recipes and their seeds")
    show = sub.add_parser("show", help="print a recipe's config file")
    show.add_argument("name")
    tiny = sub.add_parser("tiny", help="write a recipe's CPU stand-in (tiny random models and data) to OUT")
    tiny.add_argument("name")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--steps", type=int, default=2, help="optimizer steps per stage")
    tiny.add_argument("--lm-family", choices=["llama", "gpt2", "mixtral", "qwen2_moe", "remote"], default=None)
    args = p.parse_args(argv)
    if args.cmd == "list":
        for name in recipes.names():
            r = recipes.get(name)
            print(f"{name}\tseeds {','.join(r.seeds)}\t{r.path}")
    elif args.cmd == "show":
        print(recipes.get(args.name).path.read_text(encoding="utf-8"), end="")
    else:
        path = recipes.tiny(args.name, args.out, steps=args.steps, lm_family=args.lm_family)
        print(path)
        print(f"run it: synthgen train --config {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
