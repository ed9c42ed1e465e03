"""Workers: atomic claims, a SIGKILLed worker's job finished by another with exactly N
records, SIGTERM hands the job back after flushing."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import datasets
import pytest
from fastapi.testclient import TestClient
from test_service_api import job_body, settings_for, start_worker, status_of, stop, wait_for, worker_env

from synthgen.loopback_server import LoopbackServer
from synthgen.service.api import create_app
from synthgen.service.store import JobStore


def _pid_of(worker_id: str) -> int:
    return int(worker_id.rsplit("-", 2)[-2])


@pytest.fixture
def service(tmp_path):
    JobStore.open(f"sqlite:///{tmp_path}/synthgen.db").dispose()
    with LoopbackServer(latency=0.03) as srv, TestClient(create_app(settings_for(tmp_path))) as client:
        yield client, srv, tmp_path


def test_killed_worker_job_is_finished_by_another_with_exactly_n(service):
    client, srv, root = service
    workers = [start_worker(root), start_worker(root)]
    try:
        n = 120
        job = client.post("/v1/jobs", json=job_body(srv.base_url, n, concurrency=4)).json()
        first = wait_for(lambda: (s := status_of(client, job["id"]))["progress"]["records"] >= 20 and s, 60,
                         "records from the first worker")
        store: JobStore = client.app.state.store
        owner = store.get(job["id"]).worker_id
        victim = next(w for w in workers if w.pid == _pid_of(owner))
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert first["status"] == "running"
        done = wait_for(lambda: (s := status_of(client, job["id"]))["status"] in ("succeeded", "failed") and s,
                        90, "the survivor to finish the job")
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2 and store.get(job["id"]).worker_id != owner
        ds = datasets.load_from_disk(str(root / done["out"]))
        assert len(ds) == n and len(set(ds["key"])) == n
        page = client.get(f"/v1/jobs/{job['id']}/records", params={"limit": 100, "offset": 100}).json()
        assert page["total"] == n and len(page["items"]) == 20
    finally:
        for w in workers:
            stop(w)


def test_sigterm_releases_the_job_and_another_worker_resumes_it(service):
    client, srv, root = service
    first = start_worker(root)
    second = None
    try:
        n = 80
        job = client.post("/v1/jobs", json=job_body(srv.base_url, n, concurrency=4)).json()
        wait_for(lambda: status_of(client, job["id"])["progress"]["records"] >= 10, 60, "records")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
        released = status_of(client, job["id"])
        assert released["status"] == "queued" and released["progress"]["records"] >= 10
        second = start_worker(root)
        done = wait_for(lambda: (s := status_of(client, job["id"]))["status"] == "succeeded" and s, 90, "resume")
        ds = datasets.load_from_disk(str(root / done["out"]))
        assert len(ds) == n and len(set(ds["key"])) == n and done["attempts"] == 2
    finally:
        stop(first)
        if second is not None:
            stop(second)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on loopback (skipped where none is installed)."""
    pytest.importorskip("psycopg")
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not initdb[-1]:
        pytest.skip("PostgreSQL is not installed")
    bindir = os.path.dirname(initdb[-1])
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="synthgen-pg-"))  # pytest's tmp is 0700 root: postgres can't enter
    if run_as:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = base / "data"
    subprocess.run([*run_as, f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "synthgen"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], check=True,
                   capture_output=True, timeout=120)
    yield f"postgresql+psycopg://synthgen@127.0.0.1:{port}/postgres"
    subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                   timeout=60)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db.sqlite"
    url = request.getfixturevalue("postgres")
    store = JobStore.open(url)
    with store.engine.begin() as conn:  # a clean slate per test on the shared cluster
        conn.exec_driver_sql("TRUNCATE jobs, job_specs, trainings")
    store.dispose()
    return url


def test_schema_matches_the_models_after_migrations(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from synthgen.service.store.models import Base

    store = JobStore.open(db_url)
    JobStore.open(db_url).dispose()  # a second open finds the schema current
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    store.dispose()


def test_each_job_is_claimed_exactly_once(db_url, tmp_path):
    store = JobStore.open(db_url)
    ids = {store.create(generator="g", public_spec={}, secret_spec_json="{}", out_dir=str(tmp_path / str(i)),
                        n=1).id for i in range(40)}
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        other = JobStore.open(db_url, run_migrations=False)
        while (job := other.claim(name)) is not None:
            with lock:
                claimed.append((name, job.id))
        other.dispose()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(j for _, j in claimed) == sorted(ids)
    assert {store.get(j).worker_id for j in ids} == {w for w, _ in claimed}


def test_stale_running_jobs_are_requeued_and_cancel_wins(db_url):
    store = JobStore.open(db_url)
    a = store.create(generator="g", public_spec={}, secret_spec_json="{}", out_dir="/a", n=1).id
    b = store.create(generator="g", public_spec={}, secret_spec_json="{}", out_dir="/b", n=1).id
    assert store.claim("dead-1").id == a and store.claim("dead-2").id == b
    store.cancel(b)
    assert store.requeue_stale(60) == 0  # heartbeats are fresh
    time.sleep(0.05)
    assert store.requeue_stale(0.01) == 1
    assert store.get(a).status == "queued" and store.get(b).status == "cancelled"
    # the dead worker's late heartbeat no longer owns the job
    assert store.heartbeat(a, "dead-1", None) == (False, False)
    assert store.finish(a, "dead-1", "succeeded") is False


def test_a_job_runs_on_postgres(postgres, tmp_path):
    """SYNTHGEN_DATABASE_URL pointing at PostgreSQL: API and a worker process share it."""
    settings = settings_for(tmp_path, database_url=postgres)
    env = {**worker_env(tmp_path), "SYNTHGEN_DATABASE_URL": postgres}
    with LoopbackServer() as srv, TestClient(create_app(settings)) as client:
        proc = subprocess.Popen([sys.executable, "-m", "synthgen.service.cli", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            job = client.post("/v1/jobs", json=job_body(srv.base_url, 6)).json()
            done = wait_for(lambda: (s := status_of(client, job["id"]))["status"] in ("succeeded", "failed") and s,
                            90, "the job on postgres")
            assert done["status"] == "succeeded" and done["progress"]["records"] == 6
            assert client.get(f"/v1/jobs/{job['id']}/records").json()["total"] == 6
        finally:
            stop(proc)


def test_worker_that_cannot_renew_its_lease_stops_writing(tmp_path):
    """A worker cut off from the database stops before another can take its job over."""
    import asyncio

    from synthgen.service.worker import run_claimed, secret_spec_json
    from synthgen.spec import JobSpec

    settings = settings_for(tmp_path, heartbeat_s=0.2, heartbeat_timeout_s=1.5)
    store = JobStore.open(settings.resolved_database_url)
    with LoopbackServer(latency=0.02) as srv:
        spec = JobSpec.model_validate(job_body(srv.base_url, 100_000, concurrency=2))
        store.create(generator="persona-qa", public_spec={}, secret_spec_json=secret_spec_json(spec),
                     out_dir=str(tmp_path / "out"), n=spec.n)
        claimed = store.claim("cut-off")
        calls = {"n": 0}

        def unreachable(*_a, **_k):
            calls["n"] += 1
            raise ConnectionError("database unreachable")

        store.heartbeat = unreachable  # type: ignore[method-assign]
        started = time.monotonic()
        result = asyncio.run(run_claimed(store, claimed, settings, "cut-off", threading.Event()))
    assert result == "lost" and calls["n"] >= 2
    assert time.monotonic() - started < settings.heartbeat_timeout_s + 5


def test_job_insert_waits_out_a_held_sqlite_write_lock(tmp_path):
    """A worker holding SQLite's write lock delays a POST's insert; it must not fail it, and the
    insert must land soon after the lock is released (polled, not SQLite's 100 ms sleeps)."""
    import sqlite3
    import threading

    store = JobStore.open(f"sqlite:///{tmp_path}/synthgen.db")
    holder = sqlite3.connect(tmp_path / "synthgen.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.5)
        holder.execute("COMMIT")
        released.set()

    threading.Thread(target=release).start()
    try:
        row = store.create(generator="persona-qa", public_spec={"n": 1}, secret_spec_json="{}",
                           out_dir=str(tmp_path / "o"), n=1)
        assert released.is_set(), "the insert got past a held write lock"
        assert store.get(row.id) is not None
    finally:
        released.wait(5)
        holder.close()
        store.dispose()
