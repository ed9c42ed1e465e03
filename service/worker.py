"""`synthgen worker`: claim queued jobs, run them with the engine, heartbeat, stop cleanly.

A job is leased by a heartbeat. The worker writes the run's progress (RunStats.snapshot())
to the store every `heartbeat_s`, off the event loop; a job whose worker stops beating for
`heartbeat_timeout_s` is re-queued by any other worker and resumes from the checkpoints the
engine committed, so a killed worker loses only uncommitted rows and duplicates none.
SIGTERM sets the run's `stop` event: the engine flushes what it has and the job goes back to
the queue. A cancel request reaches the worker with the next heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from synthgen import policy
from synthgen.engine.executors import runner_for
from synthgen.engine.runner import RunResult, RunStats, install_fast_loop
from synthgen.engine.runs import Run
from synthgen.service import chain
from synthgen.service.scrub import scrub_text
from synthgen.service.store import JobStore
from synthgen.service.store.jobs import Claimed
from synthgen.settings import Settings, get_settings
from synthgen.spec import FINAL_JOB_STATES, JobSpec

log = logging.getLogger("synthgen.worker")
# After a cancel or SIGTERM the engine gets this long to flush and return before its task
# is cancelled outright (a request hung on a slow model must not hold a cancel for minutes).
CANCEL_GRACE_S = 3.0
SHUTDOWN_GRACE_S = 20.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def redact(text: str, secrets: list[str], roots: list[str] | None = None) -> str:
    """An error for the store: known secrets and token shapes masked, server roots cut, capped."""
    return scrub_text(text, secrets, roots or [])


def outside_policy(spec: JobSpec) -> str | None:
    """Under a worker's policy, why a stored spec may no longer run (the operator narrowed the
    policy after it was queued), or None."""
    active = policy.current()
    if active is None:
        return None
    try:
        from synthgen.engine import plugin
        from synthgen.engine.roles import resolve_roles

        gen = plugin.get(spec.generator)
        _, params_errors = policy.check_params(gen.params_model, spec.params, active, ["params"])
        _, role_errors = policy.check_roles(resolve_roles(spec.roles, gen.roles), active)
    except Exception as exc:
        return f"cannot check the spec against this server's policy: {type(exc).__name__}"
    errors = [*params_errors, *role_errors]
    if not errors:
        return None
    return "outside this server's policy: " + "; ".join(".".join(map(str, e.loc)) + ": " + e.msg for e in errors)


def secret_spec_json(spec: JobSpec) -> str:
    """The spec as JSON *with* its secrets, for the worker's eyes only (job_specs table)."""
    import json

    def reveal(o: Any) -> Any:
        if isinstance(o, SecretStr):
            return o.get_secret_value()
        raise TypeError(type(o).__name__)

    return json.dumps(spec.model_dump(mode="python"), default=reveal, ensure_ascii=False)


def run_worker(settings: Settings | None = None, *, worker_id: str | None = None,
               shutdown: threading.Event | None = None, max_jobs: int | None = None) -> int:
    """Claim and run jobs until SIGTERM/SIGINT (or `shutdown`); returns the number of jobs run."""
    settings = settings or get_settings()
    worker_id = worker_id or new_worker_id()
    shutdown = shutdown or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: shutdown.set())
    settings.data_root.mkdir(parents=True, exist_ok=True)
    store = JobStore.open(settings.resolved_database_url)
    install_fast_loop()
    # This process runs REST jobs only: its readers and downloads follow the operator policy.
    previous = policy.current()
    policy.activate(policy.Policy.from_settings(settings))
    log.info("worker %s started (data root %s)", worker_id, settings.data_root)
    ran = 0
    try:
        while not shutdown.is_set() and (max_jobs is None or ran < max_jobs):
            try:
                requeued = store.requeue_stale(settings.heartbeat_timeout_s)
                if requeued:
                    log.warning("re-queued %d job(s) whose worker stopped heartbeating", requeued)
                job = store.claim(worker_id)
            except Exception:  # the database went away for a moment: wait, never crash
                log.exception("store unavailable")
                shutdown.wait(settings.worker_poll_s)
                continue
            if job is None:
                shutdown.wait(settings.worker_poll_s)
                continue
            ran += 1
            try:
                asyncio.run(run_claimed(store, job, settings, worker_id, shutdown))
            except Exception:  # a bug here must not take the worker down; the lease expires
                log.exception("job %s: worker error", job.id)
    finally:
        policy.activate(previous)
        store.dispose()
    log.info("worker %s stopped", worker_id)
    return ran


def worker_main(settings: Settings | None = None) -> int:
    """The `synthgen worker` process: files it creates are private to the service's user
    (umask 077: folders 0700, files 0600, the engine's included), and it works in an empty
    private folder so a Hub id can never name a local folder next to where it was started."""
    os.umask(0o077)
    settings = absolute_paths(settings or get_settings())
    home = settings.data_root / ".worker"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chdir(home)
    return run_worker(settings)


def absolute_paths(settings: Settings) -> Settings:
    """The data root and a SQLite database as absolute paths (a worker changes folder)."""
    from sqlalchemy.engine import make_url

    root = settings.data_root.resolve()
    url = settings.database_url
    if url:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and \
                not Path(parsed.database).is_absolute():
            url = parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)
    return settings.model_copy(update={"data_root": root, "database_url": url})


async def run_claimed(store: JobStore, job: Claimed, settings: Settings, worker_id: str,
                      shutdown: threading.Event) -> str:
    """Run one claimed job to a final state, or hand it back; returns what became of it."""
    try:
        spec = JobSpec.model_validate_json(job.spec_json)
    except Exception as exc:
        await asyncio.to_thread(store.finish, job.id, worker_id, "failed",
                                error=redact(f"stored spec is invalid: {type(exc).__name__}", []))
        return "failed"
    secrets = spec.secret_values()
    roots = [str(settings.data_root.resolve())]
    refused = outside_policy(spec)
    if refused:
        await asyncio.to_thread(store.finish, job.id, worker_id, "failed", error=redact(refused, secrets, roots))
        return "failed"
    out = Path(job.out_dir)
    resume = Run(out).started
    # `publish` is a chain step run after success by synthgen.service.chain, not by the engine.
    spec = spec.model_copy(update={"out": str(out), "resume": resume, "publish": None})
    log.info("job %s: %s n=%d attempt %d%s", job.id, spec.generator, spec.n, job.attempts,
             " (resuming from checkpoints)" if resume else "")
    stats = RunStats(target=spec.n)
    stop = asyncio.Event()
    task = asyncio.create_task(runner_for(spec)(spec, settings=settings, stats=stats, stop=stop))  # local or ray
    why: str | None = None
    stop_at = 0.0
    last_beat = last_ok = time.monotonic()
    while not task.done():
        await asyncio.wait({task}, timeout=0.2)
        now = time.monotonic()
        if why is None and shutdown.is_set():
            why, stop_at = "shutdown", now
            stop.set()
        if now - last_beat >= settings.heartbeat_s:
            last_beat = now
            try:
                ours, cancel = await asyncio.to_thread(store.heartbeat, job.id, worker_id, stats.snapshot())
                last_ok = now
            except Exception:
                log.exception("job %s: heartbeat failed", job.id)
                # Unable to renew the lease for half its length: another worker may soon take
                # the job over, so stop writing to its folder before that can happen.
                ours, cancel = now - last_ok < settings.heartbeat_timeout_s / 2, False
            if not ours and why is None:
                why, stop_at = "lost", now
                stop.set()
                log.warning("job %s: lease lost (re-queued elsewhere); stopping", job.id)
            elif cancel and why is None:
                why, stop_at = "cancel", now
                stop.set()
        grace = SHUTDOWN_GRACE_S if why == "shutdown" else CANCEL_GRACE_S
        if why and not task.done() and now - stop_at > grace:
            task.cancel()
    snapshot = stats.snapshot()
    try:
        result: RunResult | None = await task
    except asyncio.CancelledError:
        result = None
    except Exception as exc:
        error = redact(f"{type(exc).__name__}: {exc}", secrets, roots)
        log.error("job %s failed: %s", job.id, error)
        await asyncio.to_thread(store.finish, job.id, worker_id, "failed", progress=snapshot, error=error)
        return "failed"
    if result is not None:
        snapshot = result.stats.snapshot()
    state = result.stats.state if result else "stopped"
    if state == "succeeded" and spec.quality and result is not None:  # synthgen.quality post-steps
        from synthgen.quality.post import run_for_job  # (the lease is kept alive meanwhile)

        if error := await run_for_job(store, job.id, worker_id, out, spec, settings, snapshot):
            state, result.stats.error = "failed", error  # reported (and webhooked) as a failed job
    if state == "succeeded":
        final = "succeeded"
        await asyncio.to_thread(store.finish, job.id, worker_id, final, progress=snapshot)
    elif state == "incomplete":
        final = "incomplete"  # the data is kept; `resume` with a larger max_inputs continues it
        notes = "; ".join(result.stats.notes) if result else ""
        await asyncio.to_thread(store.finish, job.id, worker_id, final, progress=snapshot,
                                error=redact(notes, secrets, roots))
    elif state == "failed":
        final = "failed"
        await asyncio.to_thread(store.finish, job.id, worker_id, final, progress=snapshot,
                                error=redact(result.stats.error or "failed", secrets, roots) if result else "failed")
    elif why == "cancel":
        final = "cancelled"
        await asyncio.to_thread(store.finish, job.id, worker_id, final, progress=snapshot)
    elif why == "lost":
        final = "lost"
    else:
        final = "queued"
        await asyncio.to_thread(store.release, job.id, worker_id, snapshot)
    log.info("job %s: %s (%d/%d records)", job.id, final, stats.records, spec.n)
    if final in FINAL_JOB_STATES:  # webhooks; after success: publish, then train (synthgen.service.chain)
        await asyncio.to_thread(chain.after_job, store, settings, job.id, job.spec_json, job.out_dir, final)
    return final


if __name__ == "__main__":  # what `serve` starts: the same as `synthgen worker`
    logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
    worker_main()
