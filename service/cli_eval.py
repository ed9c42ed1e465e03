"""`synthgen eval`: score a model on the Japanese VLM benchmarks; `eval compare`, `eval split`, `eval tasks`.

    synthgen eval --model models/llava-jp --tasks ja-vg-vqa-500,japanese-heron-bench \\
        --judge-base-url http://127.0.0.1:8002/v1 --judge-model Qwen/Qwen2.5-72B-Instruct
    synthgen eval --model Qwen/Qwen2.5-VL-7B-Instruct --base-url http://127.0.0.1:8001/v1 --tasks ja-vg-vqa-500
    synthgen eval compare evaluations/before evaluations/after
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from synthgen.settings import get_settings

eval_app = typer.Typer(add_completion=False, help="Evaluate a VLM on Japanese benchmarks (llm-jp-eval-mm's metrics).")
console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[-60:] or "model"


def build_eval_spec(model: str | None, base_url: str | None, api_key: str | None, tasks: str | None,
                    sources: list[str], limit: int | None, judge_base_url: str | None, judge_model: str | None,
                    judge_api_key: str | None, structured: bool, max_tokens: int | None, concurrency: int | None,
                    device: str | None, label: str | None, config: Path | None) -> Any:
    from synthgen.evaluator.spec import DEFAULT_TASKS, EvalSpec

    data: dict[str, Any] = {}
    if config is not None:
        text = config.read_text(encoding="utf-8")
        data = (json.loads(text) if config.suffix == ".json" else yaml.safe_load(text)) or {}
    m = dict(data.get("model") or {})
    for key, value in (("model", model), ("base_url", base_url), ("api_key", api_key), ("concurrency", concurrency)):
        if value is not None:
            m[key] = value
    if device:
        m["options"] = {**m.get("options", {}), "device": device}
    data["model"] = m
    if judge_base_url or judge_model or judge_api_key:
        j = dict(data.get("judge") or {})
        j.update({k: v for k, v in (("base_url", judge_base_url), ("model", judge_model), ("api_key", judge_api_key))
                  if v is not None})
        data["judge"] = j
    by_name = {t["name"]: dict(t) for t in data.get("tasks", [])}
    if tasks:
        by_name = {n.strip(): by_name.get(n.strip(), {"name": n.strip()}) for n in tasks.split(",") if n.strip()}
    elif not by_name:
        by_name = {n: {"name": n} for n in DEFAULT_TASKS}
    for item in sources:
        name, sep, path = item.partition("=")
        if not sep or name not in by_name:
            raise ValueError(f"--source {item!r}: expected TASK=PATH for one of {sorted(by_name)}")
        by_name[name]["source"] = path
    if limit is not None:
        for t in by_name.values():
            t["limit"] = limit
    data["tasks"] = list(by_name.values())
    if max_tokens is not None:
        data["generation"] = {**data.get("generation", {}), "max_tokens": max_tokens}
    if not structured:
        data["judge_structured"] = False
    if label:
        data["label"] = label
    return EvalSpec.model_validate(data)


@eval_app.callback(invoke_without_command=True)
def eval_command(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="model under test: a trainer checkpoint folder, or the endpoint's model name")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint serving --model (omit: run it in-process)")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SYNTHGEN_API_KEY", help="endpoint API key")] = None,
    tasks: Annotated[str | None, typer.Option(help="comma-separated tasks (see `synthgen eval tasks`)")] = None,
    source: Annotated[list[str] | None, typer.Option("--source", help="TASK=PATH_OR_HUB_ID: a local copy of a task's data")] = None,
    limit: Annotated[int | None, typer.Option(help="first N samples of each task")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="the judge's OpenAI-compatible endpoint")] = None,
    judge_model: Annotated[str | None, typer.Option(help="the judge's model name")] = None,
    judge_api_key: Annotated[str | None, typer.Option(envvar="SYNTHGEN_JUDGE_API_KEY", help="judge API key")] = None,
    structured: Annotated[bool, typer.Option("--structured/--no-structured", help="ask the judge for json_schema output")] = True,
    max_tokens: Annotated[int | None, typer.Option(help="new tokens per answer (default 256)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="answers in flight")] = None,
    device: Annotated[str | None, typer.Option(help="in-process device (cpu, cuda)")] = None,
    label: Annotated[str | None, typer.Option(help="name of this run in tables and charts")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML/JSON evaluation spec")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: <data root>/evaluations/<model>-<time>)")] = None,
) -> None:
    """Evaluate a model; writes report.json, report.md and chart.png to --out."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None and config is None:
        console.print(ctx.get_help())
        raise typer.Exit(2)
    logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
    from synthgen.evaluator.runner import evaluate
    from synthgen.evaluator.tasks import UnknownTask

    try:
        spec = build_eval_spec(model, base_url, api_key, tasks, source or [], limit, judge_base_url, judge_model,
                               judge_api_key, structured, max_tokens, concurrency, device, label, config)
    except ValidationError as exc:
        raise _fail("invalid evaluation: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    out = out or get_settings().data_root / "evaluations" / f"{slug(spec.display_name())}-{time.strftime('%Y%m%d-%H%M%S')}"
    last = [0.0]

    def progress(p: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or p["done"] == p["total"]:
            last[0] = now
            console.print(f"  {p['done']}/{p['total']} ({p['task']})", highlight=False)

    try:
        report = asyncio.run(evaluate(spec, out, progress))
    except (UnknownTask, ValueError) as exc:
        raise _fail(str(exc)) from None
    except (ConnectionError, OSError) as exc:  # a Hub dataset that cannot be reached, a missing local copy
        raise _fail(f"{exc} (a local copy in the Hub dataset's layout: --source TASK=PATH)") from None
    from synthgen.evaluator.report import markdown

    print(markdown(report).split("\n## Examples", 1)[0])
    failed = sum(t["answers_failed"] for t in report["tasks"].values())
    if failed:
        console.print(f"[yellow]warning:[/] {failed} answers failed (see `error` in report.json); they score 0 "
                      "and are not judged", highlight=False)
    console.print(f"report: {out}/report.json, report.md, chart.png", highlight=False)


@eval_app.command("compare")
def compare_command(
    run_a: Annotated[Path, typer.Argument(help="baseline evaluation folder (or its report.json)")],
    run_b: Annotated[Path, typer.Argument(help="evaluation to compare against it")],
    n_boot: Annotated[int, typer.Option(help="bootstrap draws")] = 2000,
    chart: Annotated[Path | None, typer.Option(help="write a PNG comparing the runs")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-task difference B - A with a paired-bootstrap 95% interval."""
    from synthgen.evaluator import compare as cmp
    from synthgen.evaluator.report import chart as draw
    from synthgen.evaluator.report import load_report

    try:
        a, b = load_report(run_a), load_report(run_b)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read a report: {exc}") from None
    result = cmp.compare(a, b, n_boot=n_boot)
    print(json.dumps(result, ensure_ascii=False, indent=1) if as_json else cmp.markdown(result))
    if chart is not None:
        draw([a, b], chart, title=f"{b['label']} vs {a['label']}")
        console.print(f"chart: {chart}", highlight=False)


@eval_app.command("split")
def split_command(
    source: Annotated[Path, typer.Argument(help="a synthgen run folder or dataset folder")],
    out: Annotated[Path, typer.Option(help="where to write the train/test DatasetDict")],
    fraction: Annotated[float, typer.Option(min=0.001, max=0.5, help="share held out for evaluation")] = 0.05,
) -> None:
    """Split a dataset into train / held-out test by record key (train on `train`, evaluate `test`)."""
    from synthgen.evaluator.tasks.heldout import write_split

    sizes = write_split(source, out, fraction)
    console.print(f"{out}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()), highlight=False)


@eval_app.command("tasks")
def tasks_command() -> None:
    """List the evaluation tasks."""
    from synthgen.evaluator.tasks import available, get_task

    for name in available():
        t = get_task(name)
        print(f"{name:28s} {t.hub_id or '(a local dataset)':36s} {t.description}")
