"""Run one job: stream inputs through a generator, keep records in flight, checkpoint as it goes.

The loop is deliberately plain: one task per record under a semaphore, counters in a
dataclass, rows buffered and flushed off the event loop by size or time. Nothing per
request is done here beyond what the record needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import orjson

from synthgen import __version__
from synthgen.engine import plugin
from synthgen.engine.checkpoint import ShardStore
from synthgen.engine.errors import RequestError
from synthgen.engine.finalize import publish, save_dataset, write_manifest
from synthgen.engine.keys import record_key, row_key, seed_of
from synthgen.engine.prompts import Prompts
from synthgen.engine.roles import Role, build_roles, close_roles, resolve_roles
from synthgen.settings import Settings, get_settings
from synthgen.spec import JobSpec

log = logging.getLogger(__name__)
FINAL_STATES = ("succeeded", "incomplete", "cancelled", "stopped", "failed")


@dataclass
class RunStats:
    """Live counters, read by the CLI's progress bar and the service's job status."""

    target: int
    state: str = "starting"
    done_before: int = 0
    ok: int = 0
    failed: int = 0
    rows: int = 0
    in_flight: int = 0
    inputs_read: int = 0
    started: float = field(default_factory=time.monotonic)
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    out: Path | None = None

    @property
    def records(self) -> int:
        return self.done_before + self.ok

    def tokens(self) -> int:
        return sum(r.usage.prompt_tokens + r.usage.completion_tokens for r in self.roles.values())

    def requests(self) -> int:
        return sum(r.usage.requests for r in self.roles.values())

    def usage(self) -> dict[str, Any]:
        return {name: {"model": r.model, **r.usage.as_dict()} for name, r in self.roles.items()}

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.ok / elapsed
        left = self.target - self.records
        return {
            "state": self.state, "target": self.target, "records": self.records, "failed": self.failed,
            "rows": self.rows, "in_flight": self.in_flight, "elapsed_s": round(elapsed, 3),
            "records_per_s": round(rate, 3), "requests": self.requests(),
            "tokens_per_s": round(self.tokens() / elapsed, 1),
            "eta_s": round(left / rate, 1) if rate > 0 and left > 0 else None,
            "failures_by_reason": dict(self.failures_by_reason), "usage": self.usage(),
        }


@dataclass
class RunResult:
    out: Path
    stats: RunStats
    manifest: dict[str, Any]
    dataset: datasets.Dataset | None


def _identity(spec: JobSpec, gen: plugin.Generator, params: Any) -> dict[str, Any]:
    return {"generator": gen.name, "params": params.model_dump(mode="json"), "seed": spec.seed}


def _features(gen: plugin.Generator, params: Any) -> datasets.Features:
    feats = gen.features(params)
    return datasets.Features({"key": datasets.Value("string"), **feats})


async def run_job(spec: JobSpec, *, settings: Settings | None = None, stats: RunStats | None = None,
                  stop: asyncio.Event | None = None, roles: dict[str, Role] | None = None,
                  on_flush: Callable[[RunStats], None] | None = None,
                  generator: plugin.Generator | None = None) -> RunResult:
    """Run `spec` to its end: n records written, inputs spent, or `stop` set (resumable).

    `generator` runs a plugin object that is not registered (tests, notebooks).
    """
    settings = settings or get_settings()
    gen = generator or plugin.get(spec.generator)
    params = gen.parse_params(spec.params)
    resolved = resolve_roles(spec.roles, gen.roles)
    prompts = Prompts(gen.prompt_dir)
    out = spec.out_path(settings.data_root)
    features = _features(gen, params)
    store = ShardStore.open(out, features, _identity(spec, gen, params), resume=spec.resume)
    done = store.done_keys(include_failed=not spec.retry_failed) if store.progress.shards or store.progress.failed else set()
    stats = stats or RunStats(target=spec.n)
    stats.target, stats.out = spec.n, out
    stats.done_before = min(store.progress.records, spec.n)
    stats.roles = roles or build_roles(resolved)
    stop = stop or asyncio.Event()
    concurrency = spec.concurrency or max(c.concurrency or 1 for c in resolved.values())
    started_wall = time.time()
    resources_cm = gen.resources(params) if gen.resources else contextlib.nullcontext()
    try:
        async with resources_cm as resources:
            stats.state = "running"
            await _drive(spec, gen, params, prompts, store, stats, done, concurrency, stop, resources, on_flush)
        await store.flush(stats.usage())
        dataset = None
        if stats.records < spec.n and stop.is_set():
            stats.state = "stopped"  # resumable: the dataset is written when the run completes
        else:
            stats.state = "finishing"
            dataset = await asyncio.to_thread(save_dataset, store)
            # "incomplete": the input budget ran out before n records passed the checks.
            stats.state = "succeeded" if stats.records >= spec.n else "incomplete"
    finally:
        if roles is None:
            await close_roles(stats.roles)
    manifest = _manifest(spec, gen, params, resolved, prompts, store, stats, started_wall, features)
    write_manifest(out, manifest)
    if dataset is not None and spec.publish is not None:
        token = spec.publish.token.get_secret_value() if spec.publish.token else None
        manifest["published"] = await asyncio.to_thread(
            publish, dataset, out, spec.publish.repo_id, private=spec.publish.private, token=token,
            split=spec.publish.split)
        write_manifest(out, manifest)
    return RunResult(out=out, stats=stats, manifest=manifest, dataset=dataset)


async def _drive(spec: JobSpec, gen: plugin.Generator, params: Any, prompts: Prompts, store: ShardStore,
                 stats: RunStats, done: set[str], concurrency: int, stop: asyncio.Event, resources: Any,
                 on_flush: Callable[[RunStats], None] | None) -> None:
    need = spec.n - stats.done_before
    if need <= 0:
        return
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    enough = asyncio.Event()
    fingerprint = prompts.fingerprint
    last_flush = time.monotonic()

    async def one(index: int, key: str, item: dict[str, Any]) -> None:
        ctx = plugin.RecordContext(key=key, seed=seed_of(key), params=params, roles=stats.roles,
                                   prompts=prompts, resources=resources)
        try:
            rows = await gen.generate(item, ctx)
            if not rows:
                raise plugin.Skip("no_rows", "the generator returned no rows")
        except plugin.Skip as exc:
            _fail(index, key, item, exc.reason, exc.detail)
        except RequestError as exc:
            _fail(index, key, item, f"request_{exc.reason}", str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plugin bug fails its record, never the run
            log.debug("record %s raised", key, exc_info=True)
            _fail(index, key, item, f"error_{type(exc).__name__}", str(exc))
        else:
            if stats.ok >= need:  # finished after the target was met: not part of this run
                return
            for i, row in enumerate(rows):
                row["key"] = row_key(key, i, len(rows))
            store.add_rows(rows)
            stats.ok += 1
            stats.rows += len(rows)
            if stats.ok >= need:
                enough.set()
        finally:
            stats.in_flight -= 1
            slots.release()

    def _fail(index: int, key: str, item: dict[str, Any], reason: str, detail: str) -> None:
        stats.failed += 1
        stats.failures_by_reason[reason] = stats.failures_by_reason.get(reason, 0) + 1
        store.add_failure({"key": key, "index": index, "reason": reason, "detail": detail[:2000],
                           "input": _summary(item)})

    inputs = gen.inputs(plugin.InputContext(params=params, seed=spec.seed))
    for index, item in enumerate(itertools.islice(inputs, spec.input_budget)):
        if enough.is_set() or stop.is_set():
            break
        stats.inputs_read = index + 1
        key = record_key(gen.name, gen.version, item, spec.seed, fingerprint)
        if key in done:
            continue
        await slots.acquire()
        if enough.is_set() or stop.is_set():
            slots.release()
            break
        stats.in_flight += 1
        task = asyncio.create_task(one(index, key, item))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        now = time.monotonic()
        if store.buffered_rows >= spec.shard_rows or now - last_flush >= spec.flush_seconds:
            last_flush = now
            await store.flush(stats.usage())
            if on_flush:
                on_flush(stats)
    # Inputs spent or target met: wait for the records in flight unless the target is met.
    while tasks and not enough.is_set() and not stop.is_set():
        await asyncio.wait(set(tasks), timeout=spec.flush_seconds)
        if store.buffered_rows:
            await store.flush(stats.usage())
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    if need > stats.ok and not stop.is_set():
        stats.notes.append(
            f"input budget spent ({spec.input_budget} inputs): {stats.ok} of {need} records written, "
            f"{stats.failed} dropped; raise --max-inputs or look at failures.jsonl"
        )


def _summary(item: dict[str, Any]) -> dict[str, Any]:
    """The input as JSON for the failures file, with bytes replaced by their length."""
    return orjson.loads(orjson.dumps(item, default=lambda o: f"<{type(o).__name__} {len(o) if hasattr(o, '__len__') else ''}>"))


def _manifest(spec: JobSpec, gen: plugin.Generator, params: Any, resolved: dict[str, Any], prompts: Prompts,
              store: ShardStore, stats: RunStats, started_wall: float, features: datasets.Features) -> dict[str, Any]:
    p = store.progress
    return {
        "synthgen_version": __version__,
        "generator": {"name": gen.name, "version": gen.version},
        "params": params.model_dump(mode="json"),
        "spec": spec.public_dict(),
        "models": {name: {"engine": c.engine, "model": stats.roles[name].model, "base_url": c.base_url,
                          "sampling": c.sampling()} for name, c in resolved.items()},
        "prompt_templates": prompts.hashes,
        "state": stats.state,
        "counts": {"records": p.records, "rows": p.rows, "failed": p.failed, "target": spec.n,
                   "inputs_read": stats.inputs_read},
        "failures_by_reason": stats.failures_by_reason,
        "usage": stats.usage(),
        "timings": {"started_at": started_wall, "elapsed_s": round(time.monotonic() - stats.started, 3),
                    "records_per_s": stats.snapshot()["records_per_s"]},
        "features": features.to_dict(),
        "notes": stats.notes,
    }


def install_fast_loop() -> None:
    """uvloop where available: measurably more requests/s per core on the hot path."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
