"""The service under faults and probing (#12 items 5, 9, 10, 11): the Host check without keys,
errors without server paths, a failed job retried to exactly n, dead workers restarted and
reported, secrets scrubbed from everything stored and the files private to the service."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import psutil
import pytest
from aiohttp import web
from fastapi.testclient import TestClient
from pydantic import SecretStr
from test_service_api import settings_for, status_of, wait_for, worker_env

from synthgen.engine.runs import open_run
from synthgen.loopback_server import LoopbackServer, Reply, japanese_responder
from synthgen.service.api import create_app
from synthgen.service.api.trainings import _out
from synthgen.service.worker import run_claimed

KEY = "sk-echoed-secret-4b2a9f"


def test_host_header_is_checked_only_without_api_keys(tmp_path):
    with TestClient(create_app(settings_for(tmp_path, allowed_hosts=["synthgen.lan"]))) as client:
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.nip.io"):
            r = client.get("/v1/jobs", headers={"host": host})
            assert r.status_code == 400 and "Host" in r.text
        assert client.post("/v1/jobs", headers={"host": "evil.example"}, json={"generator": "persona-qa"}
                           ).status_code == 400
        for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "synthgen.lan:8000"):
            assert client.get("/v1/jobs", headers={"host": host}).status_code == 200
        assert client.get("/v1/healthz", headers={"host": "10.1.2.3:8000"}).status_code == 200  # probes
        assert client.get("/", headers={"host": "evil.example"}).status_code == 400  # the dashboard too
    keyed = settings_for(tmp_path / "k", api_keys=[SecretStr("k-123456")])
    with TestClient(create_app(keyed)) as client:  # a rebinding page has no key: the key check suffices
        assert client.get("/v1/jobs", headers={"host": "evil.example", "authorization": "Bearer k-123456"}
                          ).status_code == 200


def test_errors_show_paths_relative_to_the_data_root(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.post("/v1/jobs", json={"generator": "caption-translate", "params": {"source": "notes.txt"},
                                          "roles": {"default": {"base_url": "http://127.0.0.1:9/v1", "model": "M"}}})
        assert r.status_code == 422 and "notes.txt" in r.text and str(tmp_path) not in r.text
        r = client.post("/v1/jobs", json={"generator": "persona-qa", "out": "/etc/x"})
        assert r.status_code == 422 and str(tmp_path) not in r.text


def test_training_log_tail_and_error_are_scrubbed(tmp_path):
    root = tmp_path.resolve()
    tail = (f"step 3 loss 1.2\nTraceback (most recent call last):\n  File \"{root}/x/train.py\", line 9, in main\n"
            f"    token = open('{root}/secret').read()\nOSError: Bearer hf_abcdefghijklmnop at {root}/models/a\n")
    row = {"id": "t", "status": "failed", "created_at": 0.0, "config": {}, "error": f"boom in {root}/models/a"}
    out = _out(row, {"state": "failed", "log_tail": tail}, root)
    assert "step 3 loss 1.2" in out.log_tail and "OSError" in out.log_tail and "models/a" in out.log_tail
    assert str(root) not in out.log_tail + (out.error or "") and "File \"" not in out.log_tail
    assert "hf_abcdefghijklmnop" not in out.log_tail and "open(" not in out.log_tail


def test_healthz_reports_a_missing_worker(tmp_path):
    class Pool:
        def status(self):
            return {"expected": 2, "alive": 1, "restarts": 3}

    with TestClient(create_app(settings_for(tmp_path))) as client:
        assert client.get("/v1/healthz").json()["workers"] is None
        client.app.state.workers = Pool()
        r = client.get("/v1/healthz")
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        assert r.json()["workers"] == {"expected": 2, "alive": 1, "restarts": 3}


class Flaky:
    """japanese_responder that answers HTTP 500 from its `fail_after`-th call on while `failing`."""

    def __init__(self, fail_after: int) -> None:
        self.fail_after = fail_after
        self.failing = True
        self.ok = 0
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, body):  # type: ignore[no-untyped-def]
        with self.lock:
            self.calls += 1
            if self.failing and self.calls > self.fail_after:
                return Reply(status=500, raw=b'{"error": "down"}')
            self.ok += 1
        return japanese_responder(body)


def test_a_failed_job_is_retried_from_its_shards_to_exactly_n(tmp_path):
    flaky = Flaky(fail_after=4)  # turns=1: two requests per record, so two records get through
    seen: list[str | None] = []
    srv = LoopbackServer(flaky)
    real = srv._chat

    async def chat(request):  # type: ignore[no-untyped-def]
        seen.append(request.headers.get("Authorization"))
        return await real(request)

    srv._chat = chat  # type: ignore[method-assign]
    with srv:
        settings = settings_for(tmp_path)
        with TestClient(create_app(settings)) as client:
            body = {"generator": "persona-qa", "n": 4, "max_inputs": 4, "concurrency": 1, "shard_rows": 1,
                    "flush_seconds": 0.1, "params": {"turns": 1},
                    "roles": {"default": {"base_url": srv.base_url, "model": "M", "api_key": KEY, "max_attempts": 1}}}
            job_id = client.post("/v1/jobs", json=body).json()["id"]
            assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 409  # still queued
            assert client.post("/v1/jobs/nope/retry").status_code == 404
            store = client.app.state.store

            def run_once() -> str:
                claimed = store.claim("w")
                return asyncio.run(run_claimed(store, claimed, settings, "w", threading.Event()))

            assert run_once() in ("failed", "incomplete")
            first = status_of(client, job_id)
            assert first["progress"]["records"] == 2, first
            assert KEY not in store.secret_spec(job_id)  # the key left the store when the job ended
            out = tmp_path / "jobs" / job_id
            kept = {row["key"] for row in open_run(out).rows(0, 10)}
            assert len(kept) == 2
            r = client.post(f"/v1/jobs/{job_id}/retry", json={"max_inputs": 8})
            assert r.status_code == 422 and r.json()["detail"][0]["type"] == "secret_required"
            flaky.failing = False
            r = client.post(f"/v1/jobs/{job_id}/retry", json={"roles": {"default": {"api_key": KEY}},
                                                               "max_inputs": 8, "retry_failed": True})
            assert r.status_code == 200 and r.json()["status"] == "queued" and KEY not in r.text
            assert run_once() == "succeeded"
            assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 409  # succeeded
            assert status_of(client, job_id)["progress"]["rows"] == 2  # this attempt wrote only the missing two
    rows = datasets.load_from_disk(str(out))
    assert len(rows) == 4 and len(set(rows["key"])) == 4 and kept <= set(rows["key"])
    assert seen and all(a == f"Bearer {KEY}" for a in seen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, host: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _post(port: int, path: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "root"
    port = _free_port()
    env = worker_env(root)
    env.pop("SYNTHGEN_DATABASE_URL")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "synthgen.service.cli", "serve", "--port", str(port),
                             "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _health(port).get("workers", {}).get("alive") == 1, 60, "serve and its worker")
        yield root, port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _health(port: int) -> dict:
    try:
        status, text = _get(port, "/v1/healthz")
    except OSError:
        return {}
    return json.loads(text) if status in (200, 503) else {}


def test_serve_restarts_dead_workers_scrubs_secrets_and_keeps_files_private(served, tmp_path):
    root, port, proc = served
    echo = LoopbackServer()

    async def echoing(request):  # type: ignore[no-untyped-def]
        # A model server that puts the request's headers into its error answer.
        return web.Response(status=400, text=f"bad request; headers: Authorization: {request.headers['Authorization']}")

    echo._chat = echoing  # type: ignore[method-assign]
    with echo:
        status, job = _post(port, "/v1/jobs", {
            "generator": "persona-qa", "n": 2, "max_inputs": 2, "flush_seconds": 0.2, "params": {"turns": 1},
            "roles": {"default": {"base_url": echo.base_url, "model": "M", "api_key": KEY, "max_attempts": 1}}})
        assert status == 201, job
        done = wait_for(lambda: (j := json.loads(_get(port, f"/v1/jobs/{job['id']}")[1]))["status"]
                        not in ("queued", "running") and j, 90, "the job to end")
    assert done["status"] in ("failed", "incomplete") and done["progress"]["failed"] == 2
    assert KEY not in json.dumps(done)
    out = root / "jobs" / job["id"]
    logs = sorted(out.rglob("*failures*.jsonl"))
    assert logs and all(KEY not in p.read_text() for p in logs)
    assert any("Authorization: Bearer ****" in p.read_text() for p in logs)  # scrubbed, not dropped
    with sqlite3.connect(root / "synthgen.db") as db:
        (spec_json,) = db.execute("SELECT spec_json FROM job_specs WHERE job_id = ?", (job["id"],)).fetchone()
    assert KEY not in spec_json
    assert stat.S_IMODE((root / "synthgen.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in logs)
    # A retried job must be given its key again: it is no longer stored.
    status, body = _post(port, f"/v1/jobs/{job['id']}/retry", {})
    assert status == 422 and body["detail"][0]["type"] == "secret_required"

    # DNS rebinding: the real server, no keys, refuses a foreign Host.
    assert _get(port, "/v1/jobs", host="attacker.example")[0] == 400
    assert _get(port, "/v1/jobs", host=f"localhost:{port}")[0] == 200

    # Kill the worker outright: serve reaps it, starts another and says so.
    serve = psutil.Process(proc.pid)
    (worker,) = [c for c in serve.children() if "synthgen.service.worker" in " ".join(c.cmdline())]
    old = worker.pid
    os.kill(old, signal.SIGKILL)
    health = wait_for(lambda: (h := _health(port)).get("workers", {}).get("restarts") == 1
                      and h["workers"]["alive"] == 1 and h, 60, "the worker to be restarted")
    assert health["status"] == "ok"
    pids = [c.pid for c in serve.children()]
    assert old not in pids and len(pids) == 1  # reaped, not a zombie child
    metrics = _get(port, "/v1/metrics")[1]
    assert "synthgen_worker_restarts_total 1.0" in metrics and "synthgen_workers_alive 1.0" in metrics
    assert Path(root / ".worker").is_dir()  # the worker's private working folder


def test_a_cancelled_job_keeps_no_keys(tmp_path):
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1, "roles": {"default": {
            "base_url": "http://127.0.0.1:9/v1", "model": "M", "api_key": KEY}},
            "publish": {"repo_id": "me/data", "token": "hf_tokentokentoken1"}})
        store = client.app.state.store
        assert KEY in store.secret_spec(r.json()["id"])  # the worker will need it
        assert client.post(f"/v1/jobs/{r.json()['id']}/cancel").json()["status"] == "cancelled"
        stored = store.secret_spec(r.json()["id"])
        assert KEY not in stored and "hf_tokentokentoken1" not in stored
