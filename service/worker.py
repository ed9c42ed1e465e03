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

from synthgen.engine.checkpoint import MARKER, STATE_DIR
from synthgen.engine.runner import RunResult, RunStats, install_fast_loop, run_job
from synthgen.service.store import JobStore
from synthgen.service.store.jobs import Claimed
from synthgen.settings import Settings, get_settings
from synthgen.spec import JobSpec

log = logging.getLogger("synthgen.worker")
# After a cancel or SIGTERM the engine gets this long to flush and return before its task
# is cancelled outright (a request hung on a slow model must not hold a cancel for minutes).
CANCEL_GRACE_S = 3.0
SHUTDOWN_GRACE_S = 20.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def secret_values(spec: JobSpec) -> list[str]:
    found = [r.api_key.get_secret_value() for r in spec.roles.values() if r.api_key]
    if spec.publish and spec.publish.token:
        found.append(spec.publish.token.get_secret_value())
    return [s for s in found if s]


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "**********")
    return text


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
        store.dispose()
    log.info("worker %s stopped", worker_id)
    return ran


async def run_claimed(store: JobStore, job: Claimed, settings: Settings, worker_id: str,
                      shutdown: threading.Event) -> str:
    """Run one claimed job to a final state, or hand it back; returns what became of it."""
    try:
        spec = JobSpec.model_validate_json(job.spec_json)
    except Exception as exc:
        await asyncio.to_thread(store.finish, job.id, worker_id, "failed", error=f"stored spec is invalid: {exc}")
        return "failed"
    secrets = secret_values(spec)
    out = Path(job.out_dir)
    resume = (out / STATE_DIR / MARKER).exists()
    spec = spec.model_copy(update={"out": str(out), "resume": resume})
    log.info("job %s: %s n=%d attempt %d%s", job.id, spec.generator, spec.n, job.attempts,
             " (resuming from checkpoints)" if resume else "")
    stats = RunStats(target=spec.n)
    stop = asyncio.Event()
    task = asyncio.create_task(run_job(spec, settings=settings, stats=stats, stop=stop))
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
        error = redact(f"{type(exc).__name__}: {exc}", secrets)
        log.error("job %s failed: %s", job.id, error)
        await asyncio.to_thread(store.finish, job.id, worker_id, "failed", progress=snapshot, error=error)
        return "failed"
    if result is not None:
        snapshot = result.stats.snapshot()
    state = result.stats.state if result else "stopped"
    if state == "succeeded":
        final = "succeeded"
        await asyncio.to_thread(store.finish, job.id, worker_id, final, progress=snapshot)
    elif state == "incomplete":
        final = "failed"
        notes = "; ".join(result.stats.notes) if result else ""
        await asyncio.to_thread(store.finish, job.id, worker_id, final, progress=snapshot,
                                error=redact(f"incomplete: {notes}", secrets))
    elif why == "cancel":
        final = "cancelled"
        await asyncio.to_thread(store.finish, job.id, worker_id, final, progress=snapshot)
    elif why == "lost":
        final = "lost"
    else:
        final = "queued"
        await asyncio.to_thread(store.release, job.id, worker_id, snapshot)
    log.info("job %s: %s (%d/%d records)", job.id, final, stats.records, spec.n)
    return final
