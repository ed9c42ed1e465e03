"""`synthgen serve`: the API plus worker processes it starts and stops with itself.

Workers run as child processes, not threads in the API's process: the engine's event loop
and parquet encoding would otherwise share the GIL with request handling, and the API's
tail latency is what users feel.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import uvicorn

from synthgen.service.store import JobStore
from synthgen.settings import Settings, get_settings

log = logging.getLogger("synthgen.serve")
WORKER_NICE = 10
PR_SET_PDEATHSIG = 1


def start_workers(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "SYNTHGEN_DATA_ROOT": str(settings.data_root.resolve()),
           "SYNTHGEN_DATABASE_URL": settings.resolved_database_url}
    cmd = [sys.executable, "-m", "synthgen.service.cli", "worker"]
    return [subprocess.Popen(cmd, env=env, preexec_fn=_worker_preexec) for _ in range(count)]


def _worker_preexec() -> None:
    # Lower priority than the API: when both want the CPU, request latency wins over batch
    # throughput (the worker's records just take a little longer).
    os.nice(WORKER_NICE)
    # If serve itself is killed outright, its workers get SIGTERM (Linux): they hand their
    # jobs back instead of running on unattended.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_workers(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM: each worker flushes its batch and hands its job back to the queue."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, settings: Settings | None = None) -> None:
    from synthgen.service.api.app import create_app

    settings = settings or get_settings()
    settings.data_root.mkdir(parents=True, exist_ok=True)
    store = JobStore.open(settings.resolved_database_url)  # migrate once, before workers start
    procs = start_workers(settings, workers)
    log.info("data root %s, database %s, %d worker(s)", Path(settings.data_root).resolve(),
             store.engine.url.render_as_string(hide_password=True), workers)
    try:
        uvicorn.run(create_app(settings, store), host=host, port=port, log_level=settings.log_level.lower(),
                    access_log=False)
    finally:
        stop_workers(procs)
        store.dispose()
