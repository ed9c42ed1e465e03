"""The Ray executor: a generator's records run in async actors on a Ray cluster.

Shape, and why:
- The *driver* (this process) keeps what must be exact in one place: the input stream, the
  record keys, admission (a record starts only while written + in_flight x (1 - drop rate) < n,
  so a run stops at n without generating records it will throw away) and the commits. Rows
  come back to it and go through the engine's own `ShardStore`, so a Ray run's folder is the
  same shards, keys and manifest as a local run's: resume, publish, evaluation and the
  dashboard see no difference, and a run started on Ray can be resumed locally or back.
- *Workers* are async actors (`RecordWorker`), each holding its own role clients and entering
  the generator's `resources` (e.g. html-render's browser pool) once. Inputs are handed out
  in small batches to the worker with the fewest records in flight (dynamic sharding: a slow
  worker simply gets less); each batch is a streaming actor call that yields every record's
  outcome as soon as it is done, so many records are in flight per actor and admission sees
  completions one by one. Ray Data's `map_batches` was not used: persona-qa's input stream is
  endless and the run must stop at exactly n, which a pipeline that runs ahead cannot do.
- *Fault tolerance*: actors restart (`max_restarts=-1`); the driver, not Ray, retries a lost
  batch's unfinished records (Ray task retries stay off, so no record is yielded twice), and a
  record that has taken its worker down `MAX_LOSSES` times fails as `worker_lost`. Nothing is
  committed by a worker, so a killed driver resumes from its shards exactly as a local run does.

Usage (tokens, requests, retries per role) rides along with each outcome as the worker's delta
since its previous report; a worker lost mid-batch loses only its unreported delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError, WorkerCrashedError

from synthgen.engine import plugin
from synthgen.engine.errors import EngineUnavailable
from synthgen.engine.keys import record_key, seed_of
from synthgen.engine.prompts import Prompts
from synthgen.engine.roles import build_roles, close_roles
from synthgen.engine.runner import (
    Ledger,
    Prepared,
    RunResult,
    RunStats,
    conclude,
    finish_drive,
    prepare,
    run_record,
)
from synthgen.engine.snapshot import Usage
from synthgen.settings import Settings
from synthgen.spec import JobSpec, RoleConfig

log = logging.getLogger(__name__)
MAX_LOSSES = 3  # times a record may be lost with its worker before it fails as worker_lost
MAX_TRIES = 12  # dispatches of one record in all (a restarting worker refuses calls without running them)
REST_S = 0.5  # a worker that lost a call gets no work for this long (doubling while it keeps losing)
MAX_BATCH = 32  # records per actor call: fewer calls under load, still streamed back one by one
LOST = (RayActorError, WorkerCrashedError, ObjectLostError)
_COUNTERS = ("requests", "failed", "retries", "prompt_tokens", "completion_tokens", "latency_s")


class RecordWorker:
    """Runs records inside a Ray actor: its own role clients and generator resources."""

    def __init__(self, gen: plugin.Generator, raw_params: dict[str, Any], resolved: dict[str, RoleConfig]) -> None:
        self.gen = gen
        self.params = gen.parse_params(raw_params)
        self.prompts = Prompts(gen.prompt_dir)
        self.roles = build_roles(resolved)  # a role with several base_urls gets an endpoint pool
        self._reported = {name: Usage() for name in self.roles}
        self._resources_cm: Any = None
        self._resources: Any = None
        self._entered = False
        self._enter_lock = asyncio.Lock()

    def describe(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "models": {name: role.model for name, role in self.roles.items()}}

    async def _enter(self) -> None:
        async with self._enter_lock:
            if not self._entered:
                if self.gen.resources:
                    self._resources_cm = self.gen.resources(self.params)
                    self._resources = await self._resources_cm.__aenter__()
                self._entered = True

    async def _one(self, key: str, item: dict[str, Any]) -> tuple[str, list[dict[str, Any]] | None, str, str]:
        ctx = plugin.RecordContext(key=key, seed=seed_of(key), params=self.params, roles=self.roles,
                                   prompts=self.prompts, resources=self._resources)
        rows, reason, detail = await run_record(self.gen, item, ctx)
        return key, rows, reason, detail

    async def run(self, batch: list[tuple[str, dict[str, Any]]]) -> AsyncIterator[tuple[Any, ...]]:
        """Yield (key, rows, reason, detail, usage delta) for each record as it finishes."""
        await self._enter()
        tasks = [asyncio.ensure_future(self._one(key, item)) for key, item in batch]
        try:
            for fut in asyncio.as_completed(tasks):
                key, rows, reason, detail = await fut
                yield key, rows, reason, detail[:2000], self._usage_delta()
        finally:
            for task in tasks:
                task.cancel()

    def _usage_delta(self) -> dict[str, dict[str, Any]]:
        delta: dict[str, dict[str, Any]] = {}
        for name, role in self.roles.items():
            now, before = role.usage, self._reported[name]
            d: dict[str, Any] = {f: getattr(now, f) - getattr(before, f) for f in _COUNTERS}
            d["failures_by_reason"] = {r: c - before.failures_by_reason.get(r, 0)
                                       for r, c in now.failures_by_reason.items()
                                       if c != before.failures_by_reason.get(r, 0)}
            if any(d.values()):
                delta[name] = d
                self._reported[name] = Usage(**{f: getattr(now, f) for f in _COUNTERS},
                                             failures_by_reason=dict(now.failures_by_reason))
        return delta

    async def close(self) -> None:
        try:
            if self._resources_cm is not None:
                await self._resources_cm.__aexit__(None, None, None)
        finally:
            await close_roles(self.roles)


@dataclass
class RemoteRole:
    """The driver's view of a role served in the workers: its model and the summed usage.

    Quacks like `roles.Role` for `RunStats` (model, usage), so snapshots and the manifest read
    the same fields whichever executor ran.
    """

    model: str
    usage: Usage = field(default_factory=Usage)

    def add(self, delta: dict[str, Any]) -> None:
        u = self.usage
        for f in _COUNTERS:
            setattr(u, f, getattr(u, f) + delta.get(f, 0))
        for reason, count in delta.get("failures_by_reason", {}).items():
            u.failures_by_reason[reason] = u.failures_by_reason.get(reason, 0) + count


@dataclass(eq=False)
class _Worker:
    actor: Any
    pid: int = 0
    load: int = 0  # records in flight on it
    lost_calls: int = 0  # consecutive calls lost with it; reset by any outcome
    resting_until: float = 0.0  # restarting, probably: let it come back before sending more
    dead: bool = False


@dataclass(eq=False)
class _Job:
    index: int
    key: str
    item: dict[str, Any]
    losses: int = 0  # calls it was in that died with their worker
    tries: int = 0


def connect(address: str | None) -> bool:
    """Join the cluster at `address` ('auto', 'ray://host:10001', host:port) or start a local
    Ray; True when this call started or joined it (so the run shuts its connection down)."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    return True


def _share(cfg: RoleConfig, workers: int) -> RoleConfig:
    """A role's concurrency is what its server takes; split it over the workers."""
    if cfg.concurrency:
        return cfg.model_copy(update={"concurrency": max(1, math.ceil(cfg.concurrency / workers))})
    return cfg


async def start_workers(gen: plugin.Generator, spec: JobSpec, resolved: dict[str, RoleConfig], *,
                        count: int | None, cpus: float, concurrency: int) -> list[_Worker]:
    if not count:
        count = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cpus, 0.01)))
    share = {name: _share(cfg, count) for name, cfg in resolved.items()}
    actor_cls = ray.remote(RecordWorker).options(
        num_cpus=cpus, max_restarts=-1, max_task_retries=0,
        max_concurrency=max(64, concurrency // count + MAX_BATCH + 8))
    workers = [_Worker(actor_cls.remote(gen, dict(spec.params), share)) for _ in range(count)]
    try:
        infos = await asyncio.gather(*(w.actor.describe.remote() for w in workers))
    except Exception as exc:  # e.g. synthgen or the generator cannot be imported on a node
        for w in workers:
            with contextlib.suppress(Exception):
                ray.kill(w.actor, no_restart=True)
        raise EngineUnavailable(f"the Ray record workers could not start: {type(exc).__name__}: "
                                f"{str(exc)[:1500]}") from None
    for w, info in zip(workers, infos, strict=True):
        w.pid = info["pid"]
    return workers


async def stop_workers(workers: list[_Worker]) -> None:
    closing = [w.actor.close.remote() for w in workers if not w.dead]
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), timeout=30)
    for w in workers:
        with contextlib.suppress(Exception):
            ray.kill(w.actor, no_restart=True)


async def run_job_ray(spec: JobSpec, *, settings: Settings | None = None, stats: RunStats | None = None,
                      stop: asyncio.Event | None = None, on_flush: Callable[[RunStats], None] | None = None,
                      generator: plugin.Generator | None = None, address: str | None = None,
                      workers: int | None = None, worker_cpus: float | None = None,
                      on_workers: Callable[[list[int]], None] | None = None) -> RunResult:
    """`runner.run_job` with the records run on Ray; same arguments, same folder, same result.

    `address` (else SYNTHGEN_RAY_ADDRESS, else RAY_ADDRESS, else a local Ray) picks the
    cluster; `workers` actors of `worker_cpus` CPUs each (default: one per CPU).
    `on_workers` is told the worker process ids (tests kill one).
    """
    run = prepare(spec, settings, stats, generator)
    settings, stats, gen, resolved = run.settings, run.stats, run.gen, run.resolved
    stop = stop or asyncio.Event()
    pool: list[_Worker] = []
    replicas: dict[str, Any] = {}
    dataset = None
    joined = False
    try:
        joined = connect(address or settings.ray_address or os.environ.get("RAY_ADDRESS"))
        stats.state = "starting"
        # Models served inside the cluster (engine ray-replicas) are started here, so the driver
        # owns them for the run and every record worker finds the same replicas by name.
        replicas = build_roles({n: c for n, c in resolved.items() if c.engine == "ray-replicas"})
        pool = await start_workers(gen, spec, resolved, count=workers or settings.ray_workers or None,
                                   cpus=worker_cpus or settings.ray_worker_cpus, concurrency=run.concurrency)
        models = await pool[0].actor.describe.remote()
        stats.roles = {name: RemoteRole(model) for name, model in models["models"].items()}  # type: ignore[misc]
        if on_workers:
            on_workers([w.pid for w in pool])
        stats.state = "running"
        await _drive(run, stop, pool, on_flush)
        dataset = await finish_drive(run, stop)
    except BaseException:
        run.store.remove_if_empty()
        raise
    finally:
        if pool:
            await stop_workers(pool)
        if replicas:
            await close_roles(replicas)
        if joined:
            ray.shutdown()
    return conclude(run, dataset, {"executor": {"name": "ray", "workers": len(pool)}})


async def _drive(run: Prepared, stop: asyncio.Event, pool: list[_Worker],
                 on_flush: Callable[[RunStats], None] | None) -> None:
    spec, gen, stats, done, concurrency = run.spec, run.gen, run.stats, run.done, run.concurrency
    ledger = Ledger.of(run, on_flush)
    need = ledger.need
    if need <= 0:
        return
    results: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    flying: dict[str, _Job] = {}  # admitted and not finished: on a worker, or in `ready`
    ready: deque[_Job] = deque()  # admitted (or lost with a worker) and waiting for a worker
    calls: set[asyncio.Task[None]] = set()
    inputs = enumerate(itertools.islice(gen.inputs(plugin.InputContext(params=run.params, seed=spec.seed)),
                                        spec.input_budget))
    roles: dict[str, RemoteRole] = stats.roles  # type: ignore[assignment]
    rerun = 0  # records sent again after their worker was lost

    def admit() -> list[_Job]:
        """Exact admission: start a record only while written + in flight x (1 - drop rate) < need."""
        while not stop.is_set() and ledger.admits(len(flying), concurrency):
            nxt = next(inputs, None)
            if nxt is None:
                break
            index, item = nxt
            stats.inputs_read = index + 1
            key = record_key(gen.name, item, spec.seed)
            if key in done or key in flying:
                continue
            job = flying[key] = _Job(index, key, item)
            ready.append(job)
        stats.in_flight = len(flying)

    def dispatch() -> float:
        """Send the ready records to the least-loaded workers that are up; seconds until a
        resting worker may take work, when some records still wait."""
        alive = [w for w in pool if not w.dead]
        if not alive:
            stats.error = "every Ray worker is lost (they keep dying on restart); resume when the cluster is healthy"
            return spec.flush_seconds
        now = time.monotonic()
        up = [w for w in alive if w.resting_until <= now]
        if not up:
            return min(w.resting_until for w in alive) - now
        size = max(1, min(MAX_BATCH, math.ceil(len(ready) / len(up))))
        while ready:
            chunk = [ready.popleft() for _ in range(min(size, len(ready)))]
            worker = min(up, key=lambda w: w.load)
            worker.load += len(chunk)
            for job in chunk:
                job.tries += 1
            task = asyncio.create_task(consume(worker, chunk))
            calls.add(task)
            task.add_done_callback(calls.discard)
        return spec.flush_seconds

    async def consume(worker: _Worker, chunk: list[_Job]) -> None:
        waiting = {job.key: job for job in chunk}
        try:
            stream = worker.actor.run.options(num_returns="streaming").remote([(j.key, j.item) for j in chunk])
            async for ref in stream:
                outcome = await ref
                waiting.pop(outcome[0], None)
                results.put_nowait(("done", worker, *outcome))
        except LOST as exc:
            # unavailable: the call was refused by (or cut off from) a restarting worker, perhaps
            # before the record ran, so it does not count as a loss against the record
            results.put_nowait(("lost", worker, list(waiting.values()), f"{type(exc).__name__}: {exc}",
                                isinstance(exc, ActorUnavailableError)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker itself failed (not one record): fail what it held
            results.put_nowait(("broken", worker, list(waiting.values()), f"{type(exc).__name__}: {exc}", False))

    def fail(job: _Job, reason: str, detail: str) -> None:
        ledger.dropped(job.key, job.index, job.item, reason, detail)

    def handle(msg: tuple[Any, ...]) -> None:
        nonlocal rerun
        kind, worker = msg[0], msg[1]
        if kind == "done":
            _, _, key, rows, reason, detail, usage = msg
            worker.load -= 1
            worker.lost_calls = 0
            for name, delta in usage.items():
                roles[name].add(delta)
            job = flying.pop(key, None)
            if job is None:
                return
            if rows is None:
                fail(job, reason, detail)
            else:
                ledger.written(key, rows)
            return
        _, _, jobs, detail, unavailable = msg
        worker.load -= len(jobs)
        if kind == "lost":
            worker.lost_calls += 1
            worker.resting_until = time.monotonic() + min(5.0, REST_S * 2 ** (worker.lost_calls - 1))
            if worker.lost_calls > 20:
                worker.dead = True  # restarts keep failing: stop sending it work
            log.warning("a Ray worker was lost (%s); %d records go to another", detail[:200], len(jobs))
        for job in jobs:
            if not unavailable:
                job.losses += 1
            if kind == "broken":
                flying.pop(job.key, None)
                fail(job, "error_worker", detail)
            elif job.losses >= MAX_LOSSES or job.tries >= MAX_TRIES:
                flying.pop(job.key, None)
                fail(job, "worker_lost", detail)
            else:
                rerun += 1
                ready.append(job)

    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            admit()
            wait = dispatch() if ready else spec.flush_seconds
            if not flying or stop.is_set() or stats.ok >= need or stats.error:
                break
            msg: tuple[Any, ...] | None = None
            if results.empty():  # wait for an outcome, the stop signal, or the next flush
                getter = asyncio.ensure_future(results.get())
                await asyncio.wait({getter, stopping}, timeout=max(0.01, min(wait, spec.flush_seconds)),
                                   return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    msg = getter.result()
                else:
                    getter.cancel()
            else:
                msg = results.get_nowait()
            while msg is not None:
                handle(msg)
                msg = results.get_nowait() if not results.empty() else None
            stats.in_flight = len(flying)
            await ledger.flush_if_due()
    finally:
        stopping.cancel()
        for task in list(calls):
            task.cancel()
        if calls:
            await asyncio.gather(*calls, return_exceptions=True)
        stats.in_flight = 0
    if rerun:
        stats.notes.append(f"ray: {rerun} records ran again after their worker was lost")
    ledger.closing_notes(stop.is_set())
