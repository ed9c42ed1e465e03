"""The /v1 API against real `synthgen worker` processes and a loopback OpenAI server.

Helpers here are shared by the other tests/test_service_*.py files.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from synthgen.engine.checkpoint import ShardStore
from synthgen.loopback_server import LoopbackServer
from synthgen.service.api import create_app
from synthgen.service.store import JobStore
from synthgen.settings import Settings

HEARTBEAT = {"heartbeat_s": 0.3, "heartbeat_timeout_s": 3.0, "worker_poll_s": 0.2}


def settings_for(root: Path, **extra: Any) -> Settings:
    return Settings(**{"data_root": root, "database_url": f"sqlite:///{root}/synthgen.db", "api_keys": [], **HEARTBEAT,
                       **extra})


def worker_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHGEN_")}
    env.update({"SYNTHGEN_DATA_ROOT": str(root), "SYNTHGEN_DATABASE_URL": f"sqlite:///{root}/synthgen.db",
                "SYNTHGEN_HEARTBEAT_S": "0.3", "SYNTHGEN_HEARTBEAT_TIMEOUT_S": "3",
                "SYNTHGEN_WORKER_POLL_S": "0.2", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    return env


def start_worker(root: Path) -> subprocess.Popen[bytes]:
    log = open(root / f"worker-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "synthgen.service.cli", "worker"], env=worker_env(root),
                            stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job_body(base_url: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"generator": "persona-qa", "n": n, "roles": {"default": {"base_url": base_url, "model": "M"}},
            "flush_seconds": 0.2, "shard_rows": 5, **extra}


def status_of(client: TestClient, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    """The API alone: jobs stay queued, nothing runs."""
    with TestClient(create_app(settings_for(tmp_path))) as client:
        yield client


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, LoopbackServer, Path]]:
    """The API, one worker process and a loopback model server (latency 20 ms)."""
    root = tmp_path_factory.mktemp("live")
    JobStore.open(f"sqlite:///{root}/synthgen.db").dispose()
    proc = start_worker(root)
    with LoopbackServer(latency=0.02) as srv, TestClient(create_app(settings_for(root))) as client:
        yield client, srv, root
    stop(proc)


def test_job_runs_to_completion_on_a_worker(live):
    client, srv, root = live
    r = client.post("/v1/jobs", json=job_body(srv.base_url, 12, params={"turns": 2}))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{job['id']}"
    done = wait_for(lambda: (s := status_of(client, job["id"]))["status"] in ("succeeded", "failed") and s,
                    60, "the job to finish")
    assert done["status"] == "succeeded", done
    p = done["progress"]
    assert p["records"] == 12 and p["target"] == 12 and p["tokens"] > 0 and p["requests"] >= 48
    assert p["usage"]["writer"]["model"] == "M" and done["attempts"] == 1
    assert done["started_at"] and done["finished_at"]
    ds = datasets.load_from_disk(str(root / done["out"]))
    assert len(ds) == 12 and len(set(ds["key"])) == 12
    page = client.get(f"/v1/jobs/{job['id']}/records", params={"limit": 5, "offset": 10}).json()
    assert page["total"] == 12 and len(page["items"]) == 2
    assert [m["role"] for m in page["items"][0]["messages"]] == ["user", "assistant"] * 2
    first = client.get(f"/v1/jobs/{job['id']}/records", params={"limit": 100}).json()["items"]
    assert sorted(x["key"] for x in first) == sorted(ds["key"])
    listed = client.get("/v1/jobs", params={"status": "succeeded", "generator": "persona-qa"}).json()
    assert job["id"] in [j["id"] for j in listed["items"]]
    assert client.get("/v1/jobs", params={"generator": "other"}).json()["total"] == 0
    metrics = client.get("/v1/metrics").text
    assert client.get("/metrics").text.splitlines()[:20] == metrics.splitlines()[:20]  # Prometheus's default path
    assert 'synthgen_jobs{status="succeeded"} 1.0' in metrics
    assert "synthgen_records_total 12.0" in metrics and "synthgen_tokens_total" in metrics
    assert 'synthgen_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="201"}' in metrics


def test_cancel_stops_a_running_job_within_seconds(live):
    client, srv, _root = live
    job = client.post("/v1/jobs", json=job_body(srv.base_url, 100_000, concurrency=4)).json()
    wait_for(lambda: status_of(client, job["id"])["progress"]["records"] >= 5, 60, "records to flow")
    asked = time.monotonic()
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    done = wait_for(lambda: (s := status_of(client, job["id"]))["status"] != "running" and s, 15, "the cancel")
    assert done["status"] == "cancelled" and time.monotonic() - asked < 8
    assert 5 <= done["progress"]["records"] < 100_000
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"  # idempotent


def test_failing_endpoint_fails_records_not_the_worker(live):
    client, _srv, _root = live
    # nothing listens on port 9; one record at a time so the count of failures is exact
    body = job_body("http://127.0.0.1:9/v1", 3, max_inputs=4, concurrency=1)
    body["roles"]["default"].update(max_attempts=1, timeout=2)
    job = client.post("/v1/jobs", json=body).json()
    done = wait_for(lambda: (s := status_of(client, job["id"]))["status"] in ("succeeded", "failed") and s, 60,
                    "the job to end")
    # Three records in a row that cannot connect end the job as unreachable, not as "raise max_inputs".
    assert done["status"] == "failed" and done["error"].startswith("endpoint unreachable"), done["error"]
    assert done["progress"]["failures_by_reason"] == {"request_connection": 3}
    # the worker is still alive and takes the next job
    _client, srv, _ = live
    ok = client.post("/v1/jobs", json=job_body(srv.base_url, 2)).json()
    assert wait_for(lambda: status_of(client, ok["id"])["status"] == "succeeded", 60, "the next job")


def test_cancel_queued_and_finished_jobs(api):
    job = api.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 5)).json()
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert api.post("/v1/jobs/nope/cancel").status_code == 404
    assert api.get("/v1/jobs/nope").status_code == 404


def _detail(r) -> str:
    assert r.status_code == 422, r.text
    return " ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in r.json()["detail"])


def test_invalid_specs_name_the_field(api):
    base = job_body("http://127.0.0.1:9/v1", 5)
    assert "params.turns" in _detail(api.post("/v1/jobs", json={**base, "params": {"turns": 99}}))
    assert "tunrs" in _detail(api.post("/v1/jobs", json={**base, "params": {"tunrs": 3}}))
    bad_role = {**base, "roles": {"writer": {"temperature": -3}}}
    assert "roles.writer.temperature" in _detail(api.post("/v1/jobs", json=bad_role))
    assert "judge" in _detail(api.post("/v1/jobs", json={**base, "roles": {"judge": {"model": "x"}}}))
    no_model = {**base, "roles": {"default": {"base_url": "http://127.0.0.1:9/v1"}}}
    assert "model" in _detail(api.post("/v1/jobs", json=no_model))
    assert "body.n" in _detail(api.post("/v1/jobs", json={**base, "n": 0}))
    assert "nonsense" in _detail(api.post("/v1/jobs", json={**base, "nonsense": 1}))
    assert "max_inputs" in _detail(api.post("/v1/jobs", json={**base, "max_inputs": 2}))
    unknown = _detail(api.post("/v1/jobs", json={**base, "generator": "no-such-generator"}))
    assert "body.generator" in unknown and "unknown generator" in unknown and "persona-qa" in unknown
    assert "body" in _detail(api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}))
    assert api.get("/v1/jobs").json()["total"] == 0  # nothing invalid was stored


def test_pagination_and_filters(api):
    ids = [api.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", i + 1)).json()["id"] for i in range(5)]
    page = api.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1
    assert [j["id"] for j in page["items"]] == ids[::-1][1:3]  # newest first
    assert api.get("/v1/jobs", params={"status": "queued"}).json()["total"] == 5
    assert api.get("/v1/jobs", params={"status": "running"}).json()["total"] == 0
    assert api.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_generators_and_health(api):
    gens = {g["name"]: g for g in api.get("/v1/generators").json()}
    assert gens["persona-qa"]["roles"] == ["writer", "answerer"]
    assert "turns" in gens["persona-qa"]["params_schema"]["properties"]
    assert api.get("/v1/healthz").json()["status"] == "ok"
    assert api.get("/healthz").status_code == 200
    schema = api.get("/v1/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/records",
            "/v1/generators", "/v1/metrics", "/v1/healthz"} <= set(schema["paths"])


def write_image_run(out: Path, count: int) -> list[bytes]:
    """A run folder with image rows, written by the engine's own ShardStore."""
    import asyncio

    feats = datasets.Features({"key": datasets.Value("string"), "image": datasets.Image(),
                               "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]})
    store = ShardStore.open(out, feats, {"generator": "test"}, resume=False)
    pngs = []
    for i in range(count):
        buf = io.BytesIO()
        Image.new("RGB", (8 + i, 6), (40 * i % 255, 90, 200)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
        store.add_rows([{"key": f"k{i}", "image": {"bytes": pngs[-1], "path": None},
                         "messages": [{"role": "user", "content": f"画像{i}について説明してください。"},
                                      {"role": "assistant", "content": f"これは{i}番目の青い画像です。"}]}])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # its own loop: callers may be inside Playwright's
        pool.submit(asyncio.run, store.flush()).result()
    return pngs


def insert_job_for(client: TestClient, out: Path, n: int, status: str = "succeeded") -> str:
    store: JobStore = client.app.state.store  # type: ignore[attr-defined]
    job = store.create(generator="persona-qa", public_spec={"generator": "persona-qa", "n": n},
                       secret_spec_json="{}", out_dir=str(out), n=n)
    from sqlalchemy import update

    from synthgen.service.store.models import Job

    with store.session.begin() as s:
        s.execute(update(Job).where(Job.id == job.id).values(status=status, records=n,
                                                              progress={"records": n, "state": status}))
    return job.id


def test_record_images_are_served(api, tmp_path):
    out = tmp_path / "jobs" / "imgs"
    pngs = write_image_run(out, 3)
    job_id = insert_job_for(api, out, 3)
    page = api.get(f"/v1/jobs/{job_id}/records").json()
    assert page["total"] == 3
    url = page["items"][2]["image"]["image_url"]
    assert url == f"/v1/jobs/{job_id}/records/2/images/0"
    r = api.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == pngs[2]
    assert api.get(f"/v1/jobs/{job_id}/records/2/images/1").status_code == 404
    assert api.get(f"/v1/jobs/{job_id}/records/9/images/0").status_code == 404


def test_trainings_start_a_separate_process_and_report_its_state(api, tmp_path):
    pytest.importorskip("synthgen.trainer.launch")
    good = {"model": {"vision": "./models/no-vision", "lm": "./models/no-lm"},
            "data": {"sources": [{"path": "jobs/missing-job"}]}, "output_dir": "models/out"}
    bad = _detail(api.post("/v1/trainings", json={**good, "precision": "fp8"}))
    assert "body.precision" in bad
    assert "body.output_dir" in _detail(api.post("/v1/trainings", json={**good, "output_dir": "../elsewhere"}))
    escape = {**good, "data": {"sources": [{"path": "/etc/passwd"}]}}
    assert "body.data.sources.0.path" in _detail(api.post("/v1/trainings", json=escape))
    r = api.post("/v1/trainings", json=good)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["state"] in ("running", "failed") and run["config"] == good
    run_dir = tmp_path / "trainings" / run["id"]
    assert (run_dir / "config.yaml").exists()  # the trainer's own process got a confined config
    done = wait_for(lambda: (s := api.get(f"/v1/trainings/{run['id']}").json())["state"] != "running" and s, 120,
                    "the trainer process to end")
    assert done["state"] == "failed" and "no-vision" in (done["error"] or "") + done["log_tail"]
    assert api.get("/v1/trainings").json()["total"] == 1
    assert api.post(f"/v1/trainings/{run['id']}/cancel").status_code == 200
    assert api.get("/v1/trainings/nope").status_code == 404


def test_smoke_model_jobs_get_short_replies_like_the_cli(api):
    spec = api.post("/v1/jobs", json={"generator": "persona-qa", "n": 1}).json()["spec"]
    assert spec["roles"]["default"]["max_tokens"] == 160  # no endpoint: the embedded CPU model
    mine = api.post("/v1/jobs", json={"generator": "persona-qa", "n": 1,
                                      "roles": {"default": {"max_tokens": 40}}}).json()["spec"]
    assert mine["roles"]["default"]["max_tokens"] == 40
    served = api.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 1)).json()["spec"]
    assert served["roles"]["default"]["max_tokens"] is None


def test_ray_executor_needs_a_cluster_the_operator_configured(api):
    body = {**job_body("http://127.0.0.1:9/v1", 5), "executor": "ray"}
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "executor_not_available"
    assert "SYNTHGEN_RAY_ADDRESS" in r.json()["detail"][0]["msg"]
