"""The Ray executor on a local Ray instance (2 CPUs, started once for the module): the same
keys and rows as the local executor, a worker process killed mid-run, a driver killed and
resumed, a REST job, all against loopback OpenAI-compatible servers; and the ray-replicas
backend (a role's model inside the cluster) on CPU."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray  # in the dev extra, so CI runs these tests
from PIL import Image
from scale_responders import answers

from synthgen.engine.errors import EngineUnavailable
from synthgen.engine.ray_executor import run_job_ray
from synthgen.engine.roles import build_roles, close_roles, resolve_roles
from synthgen.engine.runner import run_job
from synthgen.engine.runs import NotARun, open_run
from synthgen.loopback_server import LoopbackServer
from synthgen.spec import JobSpec, RoleConfig


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _spec(srv: LoopbackServer, out, **extra) -> JobSpec:
    return JobSpec(generator="persona-qa", out=str(out), roles={"default": RoleConfig(base_url=srv.base_url, model="m")},
                   **extra)


def _rows(run_dir) -> list[dict]:
    ds = open_run(run_dir).dataset()
    return sorted(ds.to_list(), key=lambda r: r["key"])


def test_ray_gives_the_same_keys_and_rows_as_local(ray_cluster, tmp_path):
    with LoopbackServer(answers, latency=0.02) as srv:
        local = asyncio.run(run_job(_spec(srv, tmp_path / "local", n=12, seed=7)))
        remote = asyncio.run(run_job_ray(_spec(srv, tmp_path / "ray", n=12, seed=7), workers=2))
    assert local.stats.state == remote.stats.state == "succeeded"
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(b) == 12 and len({r["key"] for r in b}) == 12
    assert [r["key"] for r in a] == [r["key"] for r in b]
    assert a == b
    assert local.manifest["counts"]["failed"] == 0
    man = open_run(tmp_path / "ray").manifest()
    assert man["executor"] == {"name": "ray", "workers": 2}
    assert man["counts"]["records"] == 12 and man["counts"]["failed"] == 0
    # usage came back from the workers: 2 turns = 2 writer and 2 answerer requests per record
    assert man["usage"]["writer"]["requests"] == 24 and man["usage"]["answerer"]["requests"] == 24


def test_a_killed_worker_process_loses_no_record_and_doubles_none(ray_cluster, tmp_path):
    flushes: list[int] = []
    killed: list[int] = []

    def kill_one(pids: list[int]) -> None:
        def later() -> None:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        threading.Timer(0.6, later).start()

    with LoopbackServer(answers, latency=0.15) as srv:
        spec = _spec(srv, tmp_path / "run", n=16, concurrency=8, flush_seconds=0.2)
        result = asyncio.run(run_job_ray(spec, workers=2, on_workers=kill_one,
                                         on_flush=lambda s: flushes.append(s.records)))
    assert killed, "the worker was not killed"
    assert result.stats.state == "succeeded"
    notes = " ".join(result.manifest["notes"])
    assert "ran again after their worker was lost" in notes  # the kill hit records in flight
    rows = _rows(tmp_path / "run")
    assert len(rows) == 16 and len({r["key"] for r in rows}) == 16
    assert list(open_run(tmp_path / "run").failures()) == []
    assert flushes and flushes == sorted(flushes)  # progress reached the on_flush callback as it ran


def _written(out) -> int:
    try:
        return open_run(out).count_rows()
    except NotARun:
        return 0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "synthgen.service.cli", "run", "persona-qa", *args]


def test_cli_on_ray_driver_killed_then_resumed_gives_every_key_once(ray_cluster, tmp_path):
    """`synthgen run --executor ray` joins the cluster; SIGKILL the driver after its first
    commits, then `--resume` (on Ray again) ends with exactly n records, none twice."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with LoopbackServer(answers, latency=0.1) as srv:
        args = _cli("--executor", "ray", "--ray-address", ray_cluster, "--n", "24", "--concurrency", "4",
                    "--base-url", srv.base_url, "--model", "m", "--out", str(out), "--set", "flush_seconds=0.2",
                    "--quiet")
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if _written(out) >= 4:
                    break
                time.sleep(0.1)
            assert proc.poll() is None, proc.communicate()[0]
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proc.kill()
        written = open_run(out).count_rows()
        assert 4 <= written < 24
        done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
    man = open_run(out).manifest()
    assert man["executor"]["name"] == "ray" and man["counts"]["records"] == 24


def test_html_render_on_ray_matches_local(ray_cluster, tmp_path):
    """The CPU-heavy generator: each Ray worker enters html-render's browser pool once (its
    `resources`) and draws its own pages; same keys and rows as a local run."""
    from test_html_render import _write_source, responder

    src = tmp_path / "texts.jsonl"
    _write_source(src, rows=12)
    params = {"source": str(src), "column": "body", "pool_pages": 2, "passage_chars": 120,
              "layouts": {"article": 1, "poster": 1}}
    with LoopbackServer(responder) as srv:
        def spec(name: str) -> JobSpec:
            return JobSpec(generator="html-render", n=4, seed=3, params=params, out=str(tmp_path / name),
                           roles={"default": RoleConfig(base_url=srv.base_url, model="m")})

        local = asyncio.run(run_job(spec("local")))
        remote = asyncio.run(run_job_ray(spec("ray"), workers=2))
    assert local.stats.state == remote.stats.state == "succeeded"
    assert local.manifest["counts"]["failed"] == remote.manifest["counts"]["failed"] == 0
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert [r["key"] for r in a] == [r["key"] for r in b] and len(b) == 4
    for x, y in zip(a, b, strict=True):
        ix, iy = (Image.open(io.BytesIO(r.pop("image")["bytes"])) for r in (x, y))
        # drawn by another browser in another process, from the same HTML: the same picture
        assert ix.size == iy.size and ix.tobytes() == iy.tobytes()
        assert x == y  # html, visible text (read back from the page), Q&A, messages


def test_the_spec_picks_the_executor():
    from synthgen.engine.executors import runner_for

    local = JobSpec(generator="persona-qa")
    assert local.executor == "local" and runner_for(local) is run_job
    on_ray = JobSpec.model_validate({"generator": "persona-qa", "executor": "ray"})
    assert runner_for(on_ray) is run_job_ray
    assert runner_for(on_ray, ray_address="127.0.0.1:6379").keywords == {"address": "127.0.0.1:6379"}
    with pytest.raises(ValueError):
        JobSpec.model_validate({"generator": "persona-qa", "executor": "dask"})


def test_a_rest_job_on_ray_shows_progress_and_finishes(ray_cluster, tmp_path):
    """`executor: ray` through the service: the worker (SYNTHGEN_RAY_ADDRESS set by the operator)
    drives the run on the cluster; the job's progress is visible while it runs, then its dataset."""
    from fastapi.testclient import TestClient
    from test_service_api import job_body, settings_for, status_of, stop, wait_for, worker_env

    from synthgen.service.api import create_app
    from synthgen.service.store import JobStore

    JobStore.open(f"sqlite:///{tmp_path}/synthgen.db").dispose()
    env = {**worker_env(tmp_path), "SYNTHGEN_RAY_ADDRESS": ray_cluster, "SYNTHGEN_RAY_WORKERS": "2"}
    with LoopbackServer(answers, latency=0.1) as srv, TestClient(create_app(settings_for(tmp_path, ray_address=ray_cluster))) as client:
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen([sys.executable, "-m", "synthgen.service.cli", "worker"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            job = client.post("/v1/jobs", json=job_body(srv.base_url, 30, concurrency=6, executor="ray"))
            assert job.status_code in (200, 201, 202), job.text
            job_id = job.json()["id"]
            running = wait_for(lambda: (s := status_of(client, job_id))["progress"]["records"] >= 5 and s, 120,
                               "progress from the Ray run")
            assert running["status"] == "running" and running["progress"]["records"] < 30
            done = wait_for(lambda: (s := status_of(client, job_id))["status"] in ("succeeded", "failed") and s,
                            120, "the Ray run to finish")
        finally:
            stop(worker)
            log.close()
    assert done["status"] == "succeeded", (done, (tmp_path / "worker.log").read_text()[-3000:])
    rows = _rows(tmp_path / done["out"])
    assert len(rows) == 30 and len({r["key"] for r in rows}) == 30
    assert open_run(tmp_path / done["out"]).manifest()["executor"]["name"] == "ray"


# -- the ray-replicas backend: a role's model inside the cluster (CPU here; vLLM needs GPUs) ---------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_llama import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _replica_roles(**cfg):
    return build_roles(resolve_roles({"default": RoleConfig(engine="ray-replicas", **cfg)}, ("writer",)))


def test_ray_replicas_backend_spreads_requests_over_two_cpu_replicas(ray_cluster, tiny_llama):
    roles = _replica_roles(model=tiny_llama, max_tokens=8, temperature=0.0,
                           options={"backend": "transformers", "replicas": 2, "num_cpus": 0.25})
    client = roles["writer"].client

    async def go():
        try:
            return await asyncio.gather(*(roles["writer"].chat([{"role": "user", "content": f"こんにちは {i}"}])
                                          for i in range(16)))
        finally:
            await close_roles(roles)

    results = asyncio.run(go())
    assert len(results) == 16 and all(r.completion_tokens >= 1 for r in results)
    assert {r.model for r in results} == {tiny_llama}
    served = [ep["requests"] for ep in client.pool.snapshot()]
    assert sum(served) == 16 and min(served) >= 4  # least-outstanding spread them over both replicas
    assert roles["writer"].usage.requests == 16 and roles["writer"].usage.failed == 0
    assert client.owned == []  # closed: the replicas this role started are gone


def test_vllm_replicas_without_gpus_say_so(ray_cluster, tmp_path):
    with pytest.raises(EngineUnavailable, match=r"need 2 GPUs, and this Ray cluster has 0"):
        _replica_roles(model=str(tmp_path), options={"backend": "vllm", "replicas": 2})
    with pytest.raises(ValueError, match="in-process engine"):
        _replica_roles(model=str(tmp_path), options={"backend": "openai"})


def test_a_stopped_ray_run_resumes_locally_to_exactly_n(ray_cluster, tmp_path):
    """SIGTERM's path (the stop event): the Ray run stops resumable; the same folder is then
    finished by the local executor, every key once (the folder does not care who wrote it)."""
    stop = asyncio.Event()

    def stop_after_some(stats) -> None:
        if stats.records >= 4:
            stop.set()

    with LoopbackServer(answers, latency=0.1) as srv:
        spec = _spec(srv, tmp_path / "run", n=20, concurrency=4, flush_seconds=0.2)

        async def on_ray():
            return await run_job_ray(spec, workers=2, stop=stop, on_flush=stop_after_some)

        first = asyncio.run(on_ray())
        assert first.stats.state == "stopped" and 4 <= first.stats.records < 20
        rest = asyncio.run(run_job(spec.model_copy(update={"resume": True})))
    assert rest.stats.state == "succeeded"
    rows = _rows(tmp_path / "run")
    assert len(rows) == 20 and len({r["key"] for r in rows}) == 20
