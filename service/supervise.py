"""`serve`'s worker processes, supervised: a worker that dies (OOM killer, a crash, a stray
`kill`) is reaped, reported and started again, so queued jobs never wait on a worker that is
gone. Its job is re-queued by the heartbeat lease and resumed from its checkpoints.

Health and metrics read `status()`: /v1/healthz answers 503 "degraded" while fewer workers
are alive than were asked for, and Prometheus gets alive/expected gauges and a restart counter.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from synthgen.settings import Settings

log = logging.getLogger("synthgen.serve")
WORKER_NICE = 10
PR_SET_PDEATHSIG = 1
WATCH_S = 0.5
# A worker that dies within this long of starting counts as crash-looping: restarts back off.
QUICK_DEATH_S = 10.0
MAX_BACKOFF_S = 60.0


def _worker_preexec() -> None:
    # Lower priority than the API: when both want the CPU, request latency wins over batch
    # throughput (the worker's records just take a little longer).
    os.nice(WORKER_NICE)
    # If serve itself is killed outright, its workers get SIGTERM (Linux): they hand their
    # jobs back instead of running on unattended.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerPool:
    def __init__(self, settings: Settings, count: int) -> None:
        self.expected = count
        self.restarts = 0
        self._env = {**os.environ, "SYNTHGEN_DATA_ROOT": str(settings.data_root.resolve()),
                     "SYNTHGEN_DATABASE_URL": settings.resolved_database_url}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []
        self._quick: list[int] = []
        self._next_try: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "synthgen.service.worker"]
        return subprocess.Popen(cmd, env=self._env, preexec_fn=_worker_preexec)

    def start(self) -> WorkerPool:
        now = time.monotonic()
        with self._lock:
            self._procs = [self._spawn() for _ in range(self.expected)]
            self._started = [now] * self.expected
            self._quick = [0] * self.expected
            self._next_try = [0.0] * self.expected
        if self.expected:
            self._thread = threading.Thread(target=self._watch, name="synthgen-worker-supervisor", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            self.check()

    def check(self) -> None:
        """Reap dead workers and start replacements (with back-off for one that keeps dying)."""
        now = time.monotonic()
        with self._lock:
            for i, proc in enumerate(self._procs):
                if self._stop.is_set():
                    return
                code = proc.poll()  # reaps it: no zombie
                if code is None:
                    continue
                if self._next_try[i] == 0.0:
                    quick = now - self._started[i] < QUICK_DEATH_S
                    self._quick[i] = self._quick[i] + 1 if quick else 0
                    delay = min(MAX_BACKOFF_S, 2.0 ** self._quick[i] - 1) if quick else 0.0
                    self._next_try[i] = now + delay
                    log.warning("worker pid %d exited with %s; restarting%s", proc.pid, code,
                                f" in {delay:.0f}s" if delay else "")
                if now >= self._next_try[i]:
                    try:
                        self._procs[i] = self._spawn()
                    except OSError:
                        log.exception("could not start a worker")
                        self._next_try[i] = now + 5.0
                        continue
                    self._started[i] = now
                    self._next_try[i] = 0.0
                    self.restarts += 1

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs if p.poll() is None]

    def alive(self) -> int:
        return len(self.pids())

    def status(self) -> dict[str, int]:
        return {"expected": self.expected, "alive": self.alive(), "restarts": self.restarts}

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: each worker flushes its batch and hands its job back to the queue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class WorkerCollector:
    """Prometheus view of the pool, read at scrape time."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Any]:
        st = self.pool.status()
        yield GaugeMetricFamily("synthgen_workers_alive", "worker processes alive under serve", value=st["alive"])
        yield GaugeMetricFamily("synthgen_workers_expected", "worker processes serve keeps running",
                                value=st["expected"])
        yield CounterMetricFamily("synthgen_worker_restarts", "workers restarted after they died",
                                  value=st["restarts"])
