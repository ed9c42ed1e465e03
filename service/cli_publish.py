"""`synthgen push` and `synthgen export`: publish a finished run, or export it for another trainer.

The result is printed as one JSON object on stdout (for scripts); progress and errors go to
stderr. The Hub token is read from `HF_TOKEN` or the huggingface_hub login, never from a flag
(flags end up in shell history and process listings), and is never printed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def _sources(values: list[str] | None) -> list:
    from synthgen.publish.card import SourceInfo

    out = []
    for raw in values or []:
        name, *rest = [p.strip() for p in raw.split(";")]
        if not name:
            raise typer.BadParameter(f"--source {raw!r}: expected 'NAME;LICENSE;ATTRIBUTION;URL'")
        rest += [""] * (3 - len(rest))
        out.append(SourceInfo(name=name, license=rest[0] or None, attribution=rest[1] or None, url=rest[2] or None))
    return out


def _error(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def push_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    repo: Annotated[str | None, typer.Option("--repo", help="Hub dataset repo ORG/NAME")] = None,
    local: Annotated[Path | None, typer.Option("--local", help="publish to this folder instead of the Hub")] = None,
    public: Annotated[bool, typer.Option("--public", help="create the repo public (default: private)")] = False,
    config_name: Annotated[str | None, typer.Option("--config-name", help="config (default: the generator)")] = None,
    split: Annotated[str, typer.Option("--split", help="split name")] = "train",
    license: Annotated[str | None, typer.Option("--license", help="licence id, e.g. cc-by-4.0")] = None,
    source: Annotated[list[str] | None, typer.Option(
        "--source", help="a source: 'NAME;LICENSE;ATTRIBUTION;URL' (repeatable)")] = None,
) -> None:
    """Publish a finished run to the Hub (HF_ENDPOINT, HF_TOKEN) or a local folder, with a dataset card."""
    from synthgen.engine.runs import NotARun
    from synthgen.publish.card import LicenseConflict

    if (repo is None) == (local is None):
        raise _error("give exactly one of --repo ORG/NAME or --local DIR")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        if local is not None:
            from synthgen.publish.local import publish_local

            result = asdict(publish_local(run_dir, local, config=config_name, split=split, license=license,
                                          sources=_sources(source)))
        else:
            from synthgen.publish.hub import push

            assert repo is not None
            if "/" not in repo:
                raise _error("--repo must be ORG/NAME")
            result = push(run_dir, repo, config=config_name, split=split, private=not public, license=license,
                          sources=_sources(source)).public()
    except (NotARun, LicenseConflict, ValueError, FileExistsError) as exc:
        raise _error(str(exc)) from None
    except Exception as exc:  # the Hub failed after the retries: say so, resumable by re-running
        raise _error(f"push failed ({type(exc).__name__}: {exc}); run the same command again to resume", 1) from None
    typer.echo(json.dumps(result, ensure_ascii=False))


def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    fmt: Annotated[str, typer.Option("--format", help="llava | llava-jp | trl")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
) -> None:
    """Export a finished run for LLaVA, LLaVA-JP or TRL."""
    from synthgen.engine.runs import NotARun
    from synthgen.publish.export import export

    try:
        result = export(run_dir, fmt, out, overwrite=overwrite)
    except (NotARun, ValueError, FileExistsError) as exc:
        raise _error(str(exc)) from None
    typer.echo(json.dumps(asdict(result), ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)
    app.command("export")(export_cmd)
