"""The `synthgen` command line: list generators, run one, serve, train.

Exit codes of `synthgen run` (scripts and schedulers rely on them):
  0  complete: n records written
  1  failed: the run could not go on (endpoint unreachable, disk full, an unexpected error)
  2  usage error: a bad flag, config or spec, or an --out that cannot be used as asked
  3  incomplete: the input budget or the source ran out before n records passed the checks
     (what was written is kept; `--resume --max-inputs N` continues it)
  130 interrupted (Ctrl-C / SIGTERM): resumable with `--resume`
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from synthgen.engine import plugin
from synthgen.engine.checkpoint import RunExists
from synthgen.engine.errors import EngineUnavailable
from synthgen.engine.executors import runner_for
from synthgen.engine.runner import RunResult, RunStats, install_fast_loop
from synthgen.service.config_file import build_spec
from synthgen.settings import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Synthetic multimodal training data for Japanese VLMs.")
console = Console(stderr=True)
USER_ERRORS = (ValidationError, ValueError, RunExists, plugin.UnknownGenerator, EngineUnavailable, FileNotFoundError,
               IsADirectoryError, NotADirectoryError, PermissionError)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, IsADirectoryError | NotADirectoryError | PermissionError):
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err["loc"]) or "spec"
            parts.append(f"{where}: {err['msg']}")
        return "invalid job spec: " + "; ".join(parts)
    return str(exc)


@app.command("generators")
def list_generators(as_json: Annotated[bool, typer.Option("--json", help="print params JSON schemas")] = False) -> None:
    """List the installed generators with their roles and parameters."""
    gens = plugin.available()
    if as_json:
        print(json.dumps({n: {"description": g.description, "roles": g.roles, "reads": g.reads,
                              "params_schema": g.params_schema()} for n, g in gens.items()},
                         ensure_ascii=False, indent=2))
        return
    out = Console()
    for name, gen in gens.items():
        table = Table(title=f"{name} (v{gen.version}): {gen.description}", title_justify="left", show_edge=False)
        table.add_column("param")
        table.add_column("type")
        table.add_column("default")
        table.add_column("description")
        schema = gen.params_schema()
        for field_name, field in gen.params_model.model_fields.items():
            prop = schema["properties"].get(field_name, {})
            kind = prop.get("type") or " | ".join(a.get("type", "object") for a in prop.get("anyOf", [])) or "object"
            if field.is_required():
                shown = "(required)"
            else:
                default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
                shown = json.dumps(default, ensure_ascii=False,
                                   default=_jsonable)
            table.add_row(field_name, kind, shown[:40] + ("…" if len(shown) > 40 else ""), field.description or "")
        out.print(table)
        out.print(f"  roles: {', '.join(gen.roles)}    reads: {gen.reads}\n")
    for name, why in plugin.broken().items():
        console.print(f"[yellow]warning:[/] generator {name!r} is registered but does not load: {why}",
                      highlight=False, soft_wrap=True)


def _jsonable(o: object) -> object:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    return o.name if hasattr(o, "name") else str(o)


@app.command("run")
def run(
    generator: Annotated[str, typer.Argument(help="generator name, see `synthgen generators`")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML job/roles config")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. writer.temperature=0.2")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint for every role")] = None,
    model: Annotated[str | None, typer.Option(help="model name for every role")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SYNTHGEN_API_KEY", help="endpoint API key")] = None,
    concurrency: Annotated[int | None, typer.Option(help="records in flight")] = None,
    n: Annotated[int | None, typer.Option("--n", help="records to produce")] = None,
    max_inputs: Annotated[int | None, typer.Option(help="inputs to try at most (default 3 x n)")] = None,
    seed: Annotated[int | None, typer.Option(help="run seed")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="on resume, retry failed records")] = False,
    accept_changes: Annotated[bool, typer.Option(
        "--accept-changes", help="on resume after a changed version, prompt, model or sampling: keep the old "
        "records and fill the rest under the new settings")] = False,
    refresh: Annotated[bool, typer.Option(
        "--refresh", help="on resume after such a change: regenerate the records made the old way")] = False,
    push_to_hub: Annotated[str | None, typer.Option(help="push the finished dataset to this Hub repo (user/name)")] = None,
    hub_token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", help="Hub token (default: HF_TOKEN)")] = None,
    public: Annotated[bool, typer.Option("--public", help="make the pushed dataset public")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    executor: Annotated[str | None, typer.Option(help="where records run: local (default) or ray")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="with --executor ray: the cluster (auto, ray://head:10001; default SYNTHGEN_RAY_ADDRESS, "
        "RAY_ADDRESS, else a local Ray)")] = None,
) -> None:
    """Run a generator and write a Hugging Face dataset to --out."""
    logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
    _quiet_library_progress()
    try:
        gen = plugin.get(generator)
        flags: dict[str, Any] = {"n": n, "seed": seed, "concurrency": concurrency, "max_inputs": max_inputs,
                                 "out": str(out) if out else None, "resume": resume or None,
                                 "retry_failed": retry_failed or None, "executor": executor,
                                 "accept_changes": accept_changes or None, "refresh": refresh or None,
                                 "publish": {"repo_id": push_to_hub, "token": hub_token, "private": not public}
                                 if push_to_hub else None}
        spec = build_spec(generator, gen.roles, config=config, sets=sets or [], flags=flags,
                          base_url=base_url, model=model, api_key=api_key)
        spec = _smoke_defaults(spec, gen.roles)
    except USER_ERRORS as exc:
        raise fail(describe_error(exc)) from None
    install_fast_loop()
    try:
        result = asyncio.run(_run_with_progress(spec, quiet, ray_address))
    except USER_ERRORS as exc:
        raise fail(describe_error(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; run again with --resume to continue", EXIT_INTERRUPTED) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise fail(f"disk full while writing {exc.filename or spec.out or 'the run'}: free space, then "
                       "run the same command with --resume", EXIT_FAILED) from None
        raise fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or exc}", EXIT_FAILED) from None
    _summary(result)
    if spec.quality and result.stats.state == "succeeded":
        cli_quality.post_run(spec, result.out)
    code = _exit_code(result)
    if code == EXIT_OK and spec.publish is not None:
        _publish(spec, result)
    raise typer.Exit(code)


def _publish(spec: Any, result: RunResult) -> None:
    """`--push-to-hub`: the finished run through synthgen.publish (card, parquet, resumable)."""
    from synthgen.publish.run import publish_spec

    try:
        where = publish_spec(spec.publish, result.out)
    except Exception as exc:
        raise fail(f"the dataset is written but publishing failed ({type(exc).__name__}: {exc}); "
                   f"retry with `synthgen push {result.out} --repo {spec.publish.repo_id}`", EXIT_FAILED) from None
    Console().print(f"published: {where.get('url') or where.get('local_dir') or where}", highlight=False)


def _exit_code(result: RunResult) -> int:
    state = result.stats.state
    if state == "succeeded":
        return EXIT_OK
    if state == "incomplete":
        return EXIT_INCOMPLETE
    if state == "stopped":
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def _quiet_library_progress() -> None:
    """Our own progress bar and summary say it all; library bars would only interleave."""
    import datasets

    datasets.disable_progress_bars()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _smoke_defaults(spec: Any, roles: tuple[str, ...]) -> Any:
    """With no endpoint anywhere, say so plainly and keep the smoke model's replies short."""
    from synthgen.engine.roles import resolve_roles, uses_smoke_model, with_smoke_defaults

    resolved = resolve_roles(spec.roles, roles)
    if uses_smoke_model(resolved):
        console.print(
            "[yellow]No --base-url given: using the embedded smoke-test model SmolLM2-135M-Instruct on the CPU. "
            "It proves the pipeline works; it writes little Japanese, so expect most records to be dropped by "
            "the Japanese check (each with its reason). For real data pass --base-url URL --model NAME "
            "(e.g. a vLLM server).[/]", highlight=False)
    return with_smoke_defaults(spec, resolved)


async def _run_with_progress(spec: Any, quiet: bool, ray_address: str | None = None) -> RunResult:
    stats = RunStats(target=spec.n)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(runner_for(spec, ray_address=ray_address)(spec, stats=stats, stop=stop))
    if quiet or not console.is_terminal:
        return await task
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"), TimeRemainingColumn(), console=console,
    )
    bar = progress.add_task(spec.generator, total=spec.n, detail="loading…")
    with Live(progress, console=console, refresh_per_second=4):
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            snap = stats.snapshot()
            detail = (f"{snap.records_per_s:.2f} rec/s  {snap.tokens_per_s:.0f} tok/s  "
                      f"failed {snap.failed}  in flight {snap.in_flight}")
            progress.update(bar, completed=stats.records, detail=detail)
    return await task


def _summary(result: RunResult) -> None:
    stats, man = result.stats, result.manifest
    out = Console()
    table = Table(title=f"synthgen run: {man['generator']['name']} → {result.out}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    counts = man["counts"]
    table.add_row("state", stats.state)
    table.add_row("records written", f"{counts['records']} / {counts['target']}")
    table.add_row("records dropped", str(counts["failed"]))
    table.add_row("elapsed", f"{man['timings']['elapsed_s']:.1f} s")
    table.add_row("records/s (this run)", f"{man['timings']['records_per_s']:.2f}")
    for role, u in man["usage"].items():
        table.add_row(f"{role} ({u['model']})",
                      f"{u['requests']} req, {u['prompt_tokens']}+{u['completion_tokens']} tok, "
                      f"{u['retries']} retries, {u['failed']} failed")
    out.print(table)
    if man["failures_by_reason"]:
        reasons = Table(title="dropped records by reason (details in failures.jsonl)", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        for reason, count in sorted(man["failures_by_reason"].items(), key=lambda kv: -kv[1]):
            reasons.add_row(reason, str(count))
        out.print(reasons)
    for note in stats.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    if stats.error:
        out.print(f"[bold red]failed:[/] {stats.error}", highlight=False)
    if stats.state in ("succeeded", "incomplete") and counts["records"]:
        out.print(f"dataset: datasets.load_from_disk({str(result.out)!r})", highlight=False)
    elif stats.state == "stopped":
        out.print("stopped; continue with the same command and --resume", highlight=False)


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="worker processes to start alongside the API (0: none)")] = 1,
) -> None:
    """Serve the REST API and dashboard, with workers, on the configured data root."""
    from synthgen.service.api.server import serve

    logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
    _quiet_library_progress()
    serve(host=host, port=port, workers=workers)


@app.command("worker")
def worker_cmd() -> None:
    """Claim queued jobs from the job store and run them until SIGTERM."""
    from synthgen.service.worker import worker_main

    logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
    _quiet_library_progress()
    worker_main()  # private files (umask 077), operator policy active


from synthgen.service.cli_eval import eval_app  # noqa: E402  (eval, eval compare / split / tasks)

app.add_typer(eval_app, name="eval")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="training config (YAML or TOML)")],
    sets: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. stages.0.max_steps=100")] = None,
) -> None:
    """Train a LLaVA-style VLM on synthgen datasets: stage 1 (projector), stage 2 (LM, full or LoRA)."""
    if not config.is_file():
        raise fail(f"config file not found: {config}")
    from synthgen.trainer.cli import train_main

    raise typer.Exit(train_main(config, list(sets or [])))


from synthgen.service import cli_publish  # noqa: E402  (push, export)

cli_publish.register(app)

from synthgen.service import cli_quality  # noqa: E402  (curate, report)

cli_quality.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
