"""`synthgen curate IN OUT --steps ...` and `synthgen report DATASET`.

curate prints its manifest (drops by reason, rows in and out) as one JSON object on stdout
for scripts; progress and errors go to stderr. Step parameters are `--param step.name=value`
(values parsed as JSON where they parse, e.g. `--param judge.min_score=4`,
`--param dedup.against='["runs/old"]'`). The judge step needs a model: `--base-url` and
`--model` for an OpenAI-compatible server (vLLM), or none for the embedded smoke-test model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)


def _error(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _step_list(steps: str, params: list[str] | None) -> list[dict[str, Any]]:
    names = [s.strip() for s in steps.split(",") if s.strip()]
    by_step: dict[str, dict[str, Any]] = {n: {} for n in names}
    for raw in params or []:
        target, eq, value = raw.partition("=")
        step, dot, name = target.partition(".")
        if not eq or not dot or not name:
            raise ValueError(f"--param {raw!r}: expected STEP.NAME=VALUE")
        if step not in by_step:
            raise ValueError(f"--param {raw!r}: step {step!r} is not in --steps {steps!r}")
        try:
            by_step[step][name] = json.loads(value)
        except json.JSONDecodeError:
            by_step[step][name] = value
    return [{"step": n, "params": by_step[n]} for n in names]


def curate_cmd(
    source: Annotated[str, typer.Argument(help="run folder, save_to_disk folder, parquet/jsonl, or a Hub dataset id")],
    out: Annotated[Path, typer.Argument(help="output dataset folder")],
    steps: Annotated[str, typer.Option(help="steps in order: dedup, filter, judge, balance")] = "dedup,filter",
    params: Annotated[list[str] | None, typer.Option("--param", help="STEP.NAME=VALUE, e.g. judge.min_score=4")] = None,
    base_url: Annotated[str | None, typer.Option(help="judge: OpenAI-compatible endpoint")] = None,
    model: Annotated[str | None, typer.Option(help="judge: model name")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SYNTHGEN_API_KEY", help="judge: endpoint API key")] = None,
    concurrency: Annotated[int | None, typer.Option(help="judge: requests in flight")] = None,
    question_field: Annotated[list[str] | None, typer.Option(help="question column(s) (default: messages)")] = None,
    answer_field: Annotated[list[str] | None, typer.Option(help="answer column(s) (default: messages)")] = None,
    split: Annotated[str, typer.Option(help="split of a DatasetDict or Hub dataset")] = "train",
    batch_size: Annotated[int, typer.Option(min=1, max=65536, help="records per batch")] = 1024,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty OUT")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="also write OUT/report")] = True,
) -> None:
    """Dedup, filter, judge and balance a dataset into a new dataset folder (every drop logged)."""
    import asyncio

    from pydantic import ValidationError

    from synthgen.quality.curate import curate_async, parse_steps
    from synthgen.spec import RoleConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        step_list = _step_list(steps, params)
        parse_steps(step_list)
        role_cfg = RoleConfig(base_url=base_url, model=model, api_key=api_key, concurrency=concurrency)
    except (ValueError, ValidationError) as exc:
        raise _error(str(exc)) from None

    async def go() -> dict[str, Any]:
        from synthgen.engine.roles import build_roles, close_roles, resolve_roles

        roles: dict[str, Any] = {}
        if any(s["step"] == "judge" for s in step_list):
            roles = build_roles(resolve_roles({"judge": role_cfg}, ("judge",)))
        try:
            return await curate_async(source, out, step_list, judge_role=roles.get("judge"), split=split,
                                      batch_size=batch_size, question_fields=question_field,
                                      answer_fields=answer_field, overwrite=overwrite,
                                      progress=lambda n: console.print(f"\r{n:,} records", end=""))
        finally:
            await close_roles(roles)

    try:
        manifest = asyncio.run(go())
    except (ValueError, FileNotFoundError, FileExistsError, ValidationError) as exc:
        raise _error(str(exc)) from None
    console.print()
    if report:
        from synthgen.quality.report import write_report

        console.print(f"report: {write_report(out, out / 'report', split)}")
    summary = {k: manifest[k] for k in ("source", "input_rows", "output_rows", "dropped", "by_step", "elapsed_s",
                                        "records_per_s")}
    print(json.dumps({"out": str(out), **summary}, ensure_ascii=False))


def report_cmd(
    dataset: Annotated[str, typer.Argument(help="dataset folder (a curated one also shows drops and clusters)")],
    out: Annotated[Path | None, typer.Option(help="report folder (default DATASET/report)")] = None,
    split: Annotated[str, typer.Option(help="split of a DatasetDict")] = "train",
) -> None:
    """Write a Markdown report with PNG charts: lengths, scores, top nouns, drops, duplicate clusters."""
    from synthgen.quality.report import write_report

    try:
        path = write_report(dataset, out, split)
    except (ValueError, FileNotFoundError) as exc:
        raise _error(str(exc)) from None
    print(json.dumps({"report": str(path)}))


def post_run(spec: Any, out: Path) -> None:
    """`synthgen run` with `quality:` in its config: curate the finished run into OUT/quality."""
    from synthgen.quality.post import apply_quality

    manifest = apply_quality(out, spec.quality, roles=spec.roles)
    console.print(f"quality: {manifest['input_rows']:,} -> {manifest['output_rows']:,} records in {out / 'quality'}; "
                  f"dropped {json.dumps(manifest['dropped'], ensure_ascii=False)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("curate")(curate_cmd)
    app.command("report")(report_cmd)
