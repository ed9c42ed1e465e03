"""`/v1/evaluations`: each evaluation its own process; status, report, cancel, validation at the
edge, secrets kept off disk, the dashboard page, and an evaluation chained onto a training."""

from __future__ import annotations

import time
from pathlib import Path

import eval_data
import pytest
from fastapi.testclient import TestClient

from synthgen.loopback_server import LoopbackServer, Reply
from synthgen.service.api import create_app
from synthgen.service.store import trainings as store_trainings
from synthgen.settings import Settings
from synthgen.trainer.progress import write_status as write_training_status


@pytest.fixture
def root(tmp_path):
    eval_data.vg_vqa(tmp_path / "data" / "vg")
    eval_data.heron(tmp_path / "data" / "heron")
    return tmp_path


@pytest.fixture
def client(root):
    app = create_app(Settings(data_root=root, database_url=f"sqlite:///{root}/synthgen.db", api_keys=[]))
    with TestClient(app) as c:
        yield c


def wait(client: TestClient, eid: str, states=("succeeded", "failed", "cancelled"), timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.get(f"/v1/evaluations/{eid}").json()
        if st["state"] in states:
            return st
        time.sleep(0.2)
    raise AssertionError(f"evaluation {eid} still {st['state']} after {timeout}s")


def test_evaluation_runs_as_a_process_and_serves_its_report(client, root):
    with LoopbackServer(eval_data.vlm_responder) as vlm, LoopbackServer(eval_data.judge_responder) as judge:
        body = {"model": {"base_url": vlm.base_url, "model": "loop-vlm", "api_key": "sk-model-secret"},
                "judge": {"base_url": judge.base_url, "model": "loop-judge", "api_key": "sk-judge-secret"},
                "tasks": [{"name": "ja-vg-vqa-500", "source": "data/vg"}, {"name": "japanese-heron-bench", "source": "data/heron"}],
                "label": "loopback"}
        r = client.post("/v1/evaluations", json=body)
        assert r.status_code == 201, r.text
        eid = r.json()["id"]
        st = wait(client, eid)
    assert st["state"] == "succeeded", st
    assert st["done"] == st["total"] == 12 and st["headline"]["japanese-heron-bench"] == {"metric": "heron", "value": 100.0}
    report = client.get(f"/v1/evaluations/{eid}/report").json()
    assert report["label"] == "loopback" and report["tasks"]["ja-vg-vqa-500"]["metrics"]["judge"] == 5.0
    assert client.get(f"/v1/evaluations/{eid}/report?format=md").text.startswith("# Evaluation: loopback")
    assert client.get(f"/v1/evaluations/{eid}/report?format=png").content[:4] == b"\x89PNG"
    assert [e["id"] for e in client.get("/v1/evaluations").json()["items"]] == [eid]
    page = client.get("/evaluations")
    assert page.status_code == 200 and eid in page.text and "/evaluations/chart.png" in page.text
    assert client.get("/evaluations/chart.png").content[:4] == b"\x89PNG"
    on_disk = [p.read_text(errors="ignore") for p in (root / "evaluations").rglob("*") if p.is_file()
               and p.suffix != ".sqlite" and p.suffix != ".png"]
    assert on_disk and not any("sk-model-secret" in t or "sk-judge-secret" in t for t in on_disk)


def test_the_edge_rejects_what_is_outside_policy(client):
    base = {"model": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    assert client.post("/v1/evaluations", json={**base, "tasks": [{"name": "nope"}]}).status_code == 422
    r = client.post("/v1/evaluations", json={**base, "tasks": [{"name": "jdocqa", "source": "/etc"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "path_not_allowed"
    r = client.post("/v1/evaluations", json={**base, "tasks": [{"name": "jdocqa", "source": "../x"}]})
    assert r.status_code == 422
    r = client.post("/v1/evaluations", json={"model": {"model": "/etc/passwd"}, "tasks": [{"name": "jdocqa"}]})
    assert r.status_code == 422  # an in-process checkpoint must be under the data root
    r = client.post("/v1/evaluations", json={"model": {"base_url": "http://203.0.113.9/v1", "model": "m"},
                                             "tasks": [{"name": "jdocqa"}]})
    assert r.status_code == 422 and r.json()["detail"][0] == {
        "loc": ["body", "model", "base_url"], "type": "endpoint_not_allowed",
        "msg": "endpoint host '203.0.113.9' is not allowed on this server (SYNTHGEN_ALLOWED_ENDPOINTS)"}
    r = client.post("/v1/evaluations", json={**base, "judge": {"base_url": "http://198.51.100.7/v1", "model": "j"},
                                             "tasks": [{"name": "jdocqa"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "judge", "base_url"]
    assert client.post("/v1/evaluations", json={**base, "tasks": []}).status_code == 422
    assert client.post("/v1/evaluations", json={**base, "tasks": [{"name": "jdocqa"}], "rm": 1}).status_code == 422
    assert client.get("/v1/evaluations/0123456789abcdef").status_code == 404
    assert client.get("/v1/evaluations/..%2f..%2fetc").status_code in (404, 422)


def test_cancel_stops_a_running_evaluation(client):
    # one answer at a time, 3 s each: 18 s for the task unless the cancel stops it
    with LoopbackServer(lambda b: Reply(text="赤", hang=3)) as vlm:
        body = {"model": {"base_url": vlm.base_url, "model": "slow", "concurrency": 1},
                "tasks": [{"name": "ja-vg-vqa-500", "source": "data/vg"}]}
        eid = client.post("/v1/evaluations", json=body).json()["id"]
        deadline = time.monotonic() + 30
        while vlm.requests == 0 and time.monotonic() < deadline:  # the process is up and asking
            time.sleep(0.1)
        client.post(f"/v1/evaluations/{eid}/cancel")
        st = wait(client, eid, timeout=10)
    assert st["state"] == "cancelled" and st["report"] is None and st["done"] < 6


def test_evaluation_chained_onto_a_training_waits_and_follows_its_outcome(client, root):
    store = client.app.state.store
    run_dir = root / "trainings" / "t1"
    store_trainings.create(store, config={"output_dir": "models/m1"}, run_dir=str(run_dir), training_id="t1")
    write_training_status(run_dir, state="running", output_dir=str(root / "models" / "m1"))
    (run_dir / "pid").write_text(str(__import__("os").getpid()))  # "alive" while this test runs
    body = {"model": {"model": "unused"}, "tasks": [{"name": "ja-vg-vqa-500", "source": "data/vg"}], "after_training": "t1"}
    r = client.post("/v1/evaluations", json=body)
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    time.sleep(1.0)
    assert client.get(f"/v1/evaluations/{eid}").json()["state"] == "waiting"
    write_training_status(run_dir, state="failed", error="out of memory")
    st = wait(client, eid, timeout=30)
    assert st["state"] == "failed" and "ended failed" in st["error"]
    spec = (root / "evaluations" / eid / "spec.json").read_text()
    assert str(Path(root / "models" / "m1").resolve()) in spec  # the model under test is the training's output


def test_evaluation_after_a_successful_training_scores_its_model(client, root):
    from synthgen.trainer import smoke
    from synthgen.trainer.assemble import assemble
    from synthgen.trainer.config import ModelConfig

    smoke.save_vision(root / "parts" / "v")
    smoke.save_lm(root / "parts" / "lm", smoke.shapes_corpus())
    a = assemble(ModelConfig(vision=str(root / "parts" / "v"), lm=str(root / "parts" / "lm")))
    a.model.save_pretrained(root / "models" / "m2")  # what the training wrote to its output_dir
    a.processor.save_pretrained(root / "models" / "m2")
    run_dir = root / "trainings" / "t2"
    store_trainings.create(client.app.state.store, config={"output_dir": "models/m2"}, run_dir=str(run_dir),
                           training_id="t2")
    write_training_status(run_dir, state="succeeded", output_dir=str(root / "models" / "m2"))
    body = {"model": {"model": "unused", "options": {"device": "cpu"}}, "generation": {"max_tokens": 4},
            "tasks": [{"name": "ja-vg-vqa-500", "source": "data/vg", "limit": 2}], "after_training": "t2"}
    r = client.post("/v1/evaluations", json=body)
    assert r.status_code == 201, r.text
    st = wait(client, r.json()["id"], timeout=120)
    assert st["state"] == "succeeded", st
    report = client.get(f"/v1/evaluations/{st['id']}/report").json()
    assert report["model"] == {"name": str((root / "models" / "m2").resolve()), "engine": "transformers", "base_url": None}
    assert report["tasks"]["ja-vg-vqa-500"]["n"] == 2 and report["tasks"]["ja-vg-vqa-500"]["answers_failed"] == 0
