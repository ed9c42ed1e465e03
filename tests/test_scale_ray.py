"""The Ray executor on a local Ray instance (2 CPUs, started once for the module): the same
keys and rows as the local executor, a worker process killed mid-run, a driver killed and
resumed, all against loopback OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest
import ray  # in the dev extra, so CI runs these tests

from synthgen.engine.ray_executor import run_job_ray
from synthgen.engine.runner import run_job
from synthgen.engine.runs import open_run
from synthgen.loopback_server import LoopbackServer, japanese_responder, last_user_text
from synthgen.spec import JobSpec, RoleConfig


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def answers(body: dict) -> str:
    """persona-qa replies that pass all its checks, so no record is dropped and both executors
    must write exactly the first n inputs (with drops, which n win depends on timing)."""
    text = japanese_responder(body)
    prompt = last_user_text(body)
    return text if "問題を一つ作って" in prompt or "追加の質問" in prompt else text + "\n答え：6分"


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
