"""`synthgen serve`: the API plus worker processes it starts, supervises and stops with itself.

Workers run as child processes, not threads in the API's process: the engine's event loop
and parquet encoding would otherwise share the GIL with request handling, and the API's
tail latency is what users feel. A worker that dies is restarted (`service.supervise`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import uvicorn

from synthgen.service.store import JobStore
from synthgen.service.supervise import WorkerCollector, WorkerPool
from synthgen.settings import Settings, get_settings

log = logging.getLogger("synthgen.serve")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, settings: Settings | None = None) -> None:
    from synthgen.service.api.app import create_app

    os.umask(0o077)  # the database, run folders and failure logs are private to the service's user
    settings = settings or get_settings()
    if host not in WILDCARD_HOSTS and host not in settings.allowed_hosts:
        # The address it was told to bind is a name clients use (DNS rebinding check, no keys).
        settings = settings.model_copy(update={"allowed_hosts": [*settings.allowed_hosts, host]})
    settings.data_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = JobStore.open(settings.resolved_database_url)  # migrate once, before workers start
    pool = WorkerPool(settings, workers).start()
    log.info("data root %s, database %s, %d worker(s)", Path(settings.data_root).resolve(),
             store.engine.url.render_as_string(hide_password=True), workers)
    try:
        app = create_app(settings, store)
        app.state.workers = pool
        app.state.registry.register(WorkerCollector(pool))
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)
    finally:
        pool.stop()
        store.dispose()
