"""Run one job: stream inputs through a generator, keep records in flight, checkpoint as it goes.

The loop is deliberately plain: one task per record, counters in a dataclass, rows buffered
and flushed off the event loop by size or time. Admission is exact: a record starts only
while the records written plus those in flight (discounted by the observed drop rate) fall
short of n, so a run never pays for records it will throw away.
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
from synthgen.engine.checkpoint import ShardStore, provenance_id
from synthgen.engine.errors import RequestError
from synthgen.engine.finalize import save_dataset, write_manifest
from synthgen.engine.keys import record_key, row_key, seed_of
from synthgen.engine.prompts import Prompts
from synthgen.engine.roles import Role, build_roles, close_roles, resolve_roles
from synthgen.engine.snapshot import RunSnapshot, Usage
from synthgen.redact import redact
from synthgen.settings import Settings, get_settings
from synthgen.spec import JobSpec, RoleConfig, RunState

log = logging.getLogger(__name__)
# The drop-rate estimate is capped, and starts from DROP_PRIOR records assumed kept, so the
# first failures cannot open the gate to the whole concurrency (and so the whole input budget).
MAX_DROP_ESTIMATE = 0.9
DROP_PRIOR = 2
# This many records in a row failing to connect, with none written, ends the run as unreachable.
UNREACHABLE_AFTER = 3


@dataclass
class RunStats:
    """Live counters, read by the CLI's progress bar and the service's job status."""

    target: int
    state: RunState = "starting"
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
    # Why the run could not go on (endpoint unreachable, source empty); the state is then "failed".
    error: str | None = None
    out: Path | None = None

    @property
    def records(self) -> int:
        return self.done_before + self.ok

    def tokens(self) -> int:
        return sum(r.usage.prompt_tokens + r.usage.completion_tokens for r in self.roles.values())

    def requests(self) -> int:
        return sum(r.usage.requests for r in self.roles.values())

    def usage(self) -> dict[str, Any]:
        return {name: r.usage.as_dict() for name, r in self.roles.items()}

    def drop_rate(self) -> float:
        return min(self.failed / (self.ok + self.failed + DROP_PRIOR), MAX_DROP_ESTIMATE)

    def snapshot(self) -> RunSnapshot:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.ok / elapsed
        left = self.target - self.records
        return RunSnapshot(
            state=self.state, target=self.target, records=self.records, failed=self.failed,
            rows=self.rows, in_flight=self.in_flight, inputs_read=self.inputs_read,
            elapsed_s=round(elapsed, 3), records_per_s=round(rate, 3), requests=self.requests(),
            tokens_per_s=round(self.tokens() / elapsed, 1),
            eta_s=round(left / rate, 1) if rate > 0 and left > 0 else None,
            failures_by_reason=dict(self.failures_by_reason),
            usage={name: Usage(**r.usage.as_dict()) for name, r in self.roles.items()},
            notes=list(self.notes), error=self.error)


@dataclass
class RunResult:
    out: Path
    stats: RunStats
    manifest: dict[str, Any]
    dataset: datasets.Dataset | None


def _identity(spec: JobSpec, gen: plugin.Generator, params: Any) -> dict[str, Any]:
    return {"generator": gen.name, "params": params.model_dump(mode="json"), "seed": spec.seed}


def provenance(gen: plugin.Generator, prompts: Prompts, resolved: dict[str, RoleConfig],
               settings: Settings) -> dict[str, Any]:
    """What makes a record what it is, beyond its input: a resume compares it shard by shard."""
    return {
        "generator_version": gen.version,
        "prompt_templates": dict(sorted(prompts.hashes.items())),
        "models": {name: {"engine": c.engine, "model": c.model or f"embedded:{settings.default_gguf_file}",
                          "sampling": c.sampling()} for name, c in sorted(resolved.items())},
    }


def _features(gen: plugin.Generator, params: Any) -> datasets.Features:
    feats = gen.features(params)
    return datasets.Features({"key": datasets.Value("string"), **feats})


@dataclass
class Prepared:
    """A run opened and ready to drive: what the local runner and the Ray executor share."""

    spec: JobSpec
    settings: Settings
    gen: plugin.Generator
    params: Any
    resolved: dict[str, RoleConfig]
    prompts: Prompts
    out: Path
    features: datasets.Features
    made_by: dict[str, Any]
    store: ShardStore
    done: set[str]
    stats: RunStats
    concurrency: int
    started_wall: float = field(default_factory=time.time)


def prepare(spec: JobSpec, settings: Settings | None, stats: RunStats | None,
            generator: plugin.Generator | None) -> Prepared:
    """Resolve the spec, open (or resume) the run folder, and read what is already done."""
    settings = settings or get_settings()
    gen = generator or plugin.get(spec.generator)
    params = gen.parse_params(spec.params)
    resolved = resolve_roles(spec.roles, gen.roles)
    prompts = Prompts(gen.prompt_dir)
    out = spec.out_path(settings.data_root)
    features = _features(gen, params)
    made_by = provenance(gen, prompts, resolved, settings)
    store = ShardStore.open(out, features, _identity(spec, gen, params), resume=spec.resume,
                            provenance=made_by, on_change=spec.on_change)
    done = store.done_keys(include_failed=not spec.retry_failed) if store.progress.shards or store.progress.failed else set()
    stats = stats or RunStats(target=spec.n)
    stats.target, stats.out = spec.n, out
    stats.done_before = min(store.progress.records, spec.n)
    stats.notes.extend(store.new_notes)
    concurrency = spec.concurrency or max(c.concurrency or 1 for c in resolved.values())
    return Prepared(spec, settings, gen, params, resolved, prompts, out, features, made_by, store, done, stats,
                    concurrency)


async def finish_drive(run: Prepared, stop: asyncio.Event) -> datasets.Dataset | None:
    """After the drive: commit what is buffered, decide the end state, write the dataset."""
    stats, spec = run.stats, run.spec
    await run.store.flush(stats.usage())
    if stats.error:
        stats.state = "failed"  # e.g. the endpoint is unreachable: what was written stays resumable
        return None
    if stats.records < spec.n and stop.is_set():
        stats.state = "stopped"  # resumable: the dataset is written when the run completes
        return None
    stats.state = "finishing"
    dataset = await asyncio.to_thread(save_dataset, run.store)
    # "incomplete": the input budget ran out before n records passed the checks.
    stats.state = "succeeded" if stats.records >= spec.n else "incomplete"
    return dataset


def conclude(run: Prepared, dataset: datasets.Dataset | None, extra: dict[str, Any] | None = None) -> RunResult:
    """The manifest, or no folder at all for a failed run that wrote nothing."""
    manifest = _manifest(run, extra or {})
    if run.stats.state == "failed" and run.store.remove_if_empty():
        # Nothing was written (e.g. an empty source): leave no folder that blocks the next try.
        return RunResult(out=run.out, stats=run.stats, manifest=manifest, dataset=None)
    write_manifest(run.out, manifest)
    # `spec.publish` is not the engine's: synthgen.publish reads the finished run (CLI, worker chain).
    return RunResult(out=run.out, stats=run.stats, manifest=manifest, dataset=dataset)


async def run_job(spec: JobSpec, *, settings: Settings | None = None, stats: RunStats | None = None,
                  stop: asyncio.Event | None = None, roles: dict[str, Role] | None = None,
                  on_flush: Callable[[RunStats], None] | None = None,
                  generator: plugin.Generator | None = None) -> RunResult:
    """Run `spec` to its end: n records written, inputs spent, or `stop` set (resumable).

    `generator` runs a plugin object that is not registered (tests, notebooks).
    """
    run = prepare(spec, settings, stats, generator)
    stop = stop or asyncio.Event()
    dataset = None
    try:
        run.stats.roles = roles or build_roles(run.resolved)
        resources_cm = run.gen.resources(run.params) if run.gen.resources else contextlib.nullcontext()
        async with resources_cm as resources:
            run.stats.state = "running"
            await _drive(run, stop, resources, on_flush)
        dataset = await finish_drive(run, stop)
    except BaseException:
        run.store.remove_if_empty()  # a run that failed before writing anything leaves no marker behind
        raise
    finally:
        if roles is None:
            await close_roles(run.stats.roles)
    return conclude(run, dataset)


async def run_record(gen: plugin.Generator, item: dict[str, Any], ctx: plugin.RecordContext
                     ) -> tuple[list[dict[str, Any]] | None, str, str]:
    """One record -> (rows, "", "") or (None, reason slug, detail). Never raises but for cancel:
    `Skip` keeps its reason, a spent request is `request_<reason>`, a plugin bug `error_<Type>`."""
    try:
        rows = await gen.generate(item, ctx)
        if not rows:
            raise plugin.Skip("no_rows", "the generator returned no rows")
    except plugin.Skip as exc:
        return None, exc.reason, exc.detail
    except RequestError as exc:
        return None, f"request_{exc.reason}", str(exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a plugin bug fails its record, never the run
        log.debug("record %s raised", ctx.key, exc_info=True)
        return None, f"error_{type(exc).__name__}", str(exc)
    return rows, "", ""


@dataclass
class Ledger:
    """What happens to a finished record, the same for every executor: rows to the store (only
    while the target is unmet), drops to the failures file with secrets masked, the
    unreachable-endpoint check, admission, and the notes a run ends with."""

    spec: JobSpec
    store: ShardStore
    stats: RunStats
    need: int
    secrets: list[str]
    on_flush: Callable[[RunStats], None] | None = None
    last_flush: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, run: Prepared, on_flush: Callable[[RunStats], None] | None = None) -> Ledger:
        return cls(run.spec, run.store, run.stats, run.spec.n - run.stats.done_before, run.spec.secret_values(),
                   on_flush)

    async def flush_if_due(self) -> None:
        """Commit by size (`shard_rows`) or time (`flush_seconds`), then tell the watcher."""
        now = time.monotonic()
        if self.store.buffered_rows >= self.spec.shard_rows or now - self.last_flush >= self.spec.flush_seconds:
            self.last_flush = now
            await self.store.flush(self.stats.usage())
            if self.on_flush:
                self.on_flush(self.stats)

    def admits(self, in_flight: int, concurrency: int) -> bool:
        """Exact admission: start one more only if the records in flight, discounted by the
        share that gets dropped, cannot already cover what is still missing."""
        stats = self.stats
        return in_flight < concurrency and stats.ok + in_flight * (1.0 - stats.drop_rate()) < self.need

    @property
    def enough(self) -> bool:
        return self.stats.ok >= self.need

    def written(self, key: str, rows: list[dict[str, Any]]) -> None:
        stats = self.stats
        if stats.ok >= self.need:  # finished after the target was met: not part of this run
            return
        for i, row in enumerate(rows):
            row["key"] = row_key(key, i, len(rows))
        self.store.add_rows(rows)
        stats.ok += 1
        stats.rows += len(rows)

    def dropped(self, key: str, index: int, item: dict[str, Any], reason: str, detail: str) -> None:
        stats = self.stats
        stats.failed += 1
        stats.failures_by_reason[reason] = stats.failures_by_reason.get(reason, 0) + 1
        # a server that echoes headers must not put a key on disk
        self.store.add_failure({"key": key, "index": index, "reason": reason,
                                "detail": redact(detail, self.secrets)[:2000], "input": _summary(item)})
        # Every record so far died on a connection that never opened (retries spent): the
        # endpoint is down or wrong. Going on would only burn the input budget and end with
        # advice to raise it, so stop and say so.
        if (stats.ok == 0 and stats.done_before == 0 and reason == "request_connection"
                and stats.failures_by_reason[reason] == stats.failed >= UNREACHABLE_AFTER):
            stats.error = f"endpoint unreachable: {stats.failed} records failed to connect ({detail[:200]})"

    def closing_notes(self, stopped: bool) -> None:
        stats, spec = self.stats, self.spec
        if stats.error or self.enough or stopped:
            return
        if stats.inputs_read == 0:
            stats.error = "source empty: the generator's inputs yielded nothing (check its source params)"
        elif stats.inputs_read < spec.input_budget:
            stats.notes.append(
                f"source exhausted after {stats.inputs_read} inputs: {stats.ok} of {self.need} records written, "
                f"{stats.failed} dropped (reasons in failures.jsonl)")
        else:
            stats.notes.append(
                f"input budget spent ({spec.input_budget} inputs): {stats.ok} of {self.need} records written, "
                f"{stats.failed} dropped; look at failures.jsonl, then resume with a larger max_inputs (CLI: --resume --max-inputs N)")


async def _drive(run: Prepared, stop: asyncio.Event, resources: Any,
                 on_flush: Callable[[RunStats], None] | None) -> None:
    spec, gen, stats = run.spec, run.gen, run.stats
    ledger = Ledger.of(run, on_flush)
    flush_if_due = ledger.flush_if_due
    if ledger.need <= 0:
        return
    tasks: set[asyncio.Task[None]] = set()
    changed = asyncio.Event()  # set whenever a record finishes: the gate below looks again
    # A stop must wake the waits below at once; a tick wakes them for time-based flushes when no
    # record finishes for a while (a plain Event wait per record start, no timer per wait).
    stopping = asyncio.ensure_future(stop.wait())
    stopping.add_done_callback(lambda _t: changed.set())
    ticker = asyncio.create_task(_tick(changed, spec.flush_seconds))

    def over() -> bool:
        return ledger.enough or stop.is_set() or stats.error is not None

    async def one(index: int, key: str, item: dict[str, Any]) -> None:
        ctx = plugin.RecordContext(key=key, seed=seed_of(key), params=run.params, roles=stats.roles,
                                   prompts=run.prompts, resources=resources)
        try:
            rows, reason, detail = await run_record(gen, item, ctx)
            if rows is None:
                ledger.dropped(key, index, item, reason, detail)
            else:
                ledger.written(key, rows)
        finally:
            stats.in_flight -= 1
            changed.set()

    inputs = gen.inputs(plugin.InputContext(params=run.params, seed=spec.seed))
    for index, item in enumerate(itertools.islice(inputs, spec.input_budget)):
        if over():
            break
        key = record_key(gen.name, item, spec.seed)
        if key in run.done:
            stats.inputs_read = index + 1
            continue
        while not ledger.admits(stats.in_flight, run.concurrency) and not over():
            changed.clear()
            await changed.wait()
            await flush_if_due()
        if over():
            break
        stats.inputs_read = index + 1
        stats.in_flight += 1
        task = asyncio.create_task(one(index, key, item))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await flush_if_due()
    # Inputs spent or target met: wait for the records in flight unless the run is over.
    while tasks and not over():
        await asyncio.wait({*tasks, stopping}, timeout=spec.flush_seconds, return_when=asyncio.FIRST_COMPLETED)
        await flush_if_due()
    stopping.cancel()
    ticker.cancel()
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    ledger.closing_notes(stop.is_set())


async def _tick(event: asyncio.Event, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        event.set()


def _summary(item: dict[str, Any]) -> dict[str, Any]:
    """The input as JSON for the failures file, with bytes replaced by their length."""
    return orjson.loads(orjson.dumps(item, default=lambda o: f"<{type(o).__name__} {len(o) if hasattr(o, '__len__') else ''}>"))


def _manifest(run: Prepared, extra: dict[str, Any]) -> dict[str, Any]:
    spec, gen, params, resolved, prompts = run.spec, run.gen, run.params, run.resolved, run.prompts
    store, stats, started_wall, features, made_by = run.store, run.stats, run.started_wall, run.features, run.made_by
    p = store.progress
    by_provenance = p.records_by_provenance()
    return {
        "synthgen_version": __version__,
        "generator": {"name": gen.name, "version": gen.version},
        "params": params.model_dump(mode="json"),
        "spec": spec.public_dict(),
        "models": {name: {"engine": c.engine, "model": stats.roles[name].model, "base_url": c.base_url,
                          "sampling": c.sampling()} for name, c in resolved.items()},
        "prompt_templates": prompts.hashes,
        "provenance": {"current": provenance_id(made_by),
                       "records": by_provenance,
                       "details": {pid: p.provenances.get(pid, {}) for pid in by_provenance}},
        "state": stats.state,
        "counts": {"records": p.records, "rows": p.rows, "failed": p.failed, "target": spec.n,
                   "inputs_read": stats.inputs_read},
        "failures_by_reason": stats.failures_by_reason,
        "usage": stats.usage(),
        "timings": {"started_at": started_wall, "elapsed_s": round(time.monotonic() - stats.started, 3),
                    "records_per_s": stats.snapshot().records_per_s},
        "features": features.to_dict(),
        "notes": stats.notes,
        **extra,
    }


def install_fast_loop() -> None:
    """uvloop where available: measurably more requests/s per core on the hot path."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
