"""Chained jobs: generate -> publish -> train through the REST API and a real worker process, with
signed webhooks; a failed step says why and leaves the data; POST /v1/jobs/{id}/publish retries it.
The Hub here is `LoopbackHub`, the model servers `LoopbackServer`s, the trainer the tiny random LLaVA."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import datasets
import pytest
from fastapi.testclient import TestClient
from image_responders import CAPTIONS_JA, GENERIC_ANSWER, GENERIC_QUESTION, image_responder
from publish_runs import hub_online
from test_service_api import settings_for, stop, wait_for, worker_env

from synthgen.generators.images.samples import write_folder
from synthgen.loopback_server import LoopbackServer
from synthgen.publish.loopback_hub import LoopbackHub
from synthgen.service.api import create_app
from synthgen.service.chain import deliver, sign
from synthgen.service.store import JobStore
from synthgen.spec import WebhookSpec


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    hub_online(monkeypatch)


SECRET = "whsec-test-123"


class Receiver:
    """A loopback webhook endpoint: records each delivery; answers `fail_first` 503s first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 503 if len(outer.deliveries) <= outer.fail_first else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [json.loads(body)["event"] for _, body in self.deliveries]

    def verified(self) -> bool:
        """Every delivery carries a valid HMAC-SHA256 of "<timestamp>.<body>"."""
        for headers, body in self.deliveries:
            mac = hmac.new(SECRET.encode(), headers["x-synthgen-timestamp"].encode() + b"." + body, hashlib.sha256)
            if not hmac.compare_digest(headers["x-synthgen-signature"], "sha256=" + mac.hexdigest()):
                return False
        return True

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_is_signed_and_retried_with_backoff():
    rx = Receiver(fail_first=2)
    try:
        hook = WebhookSpec(url=rx.url, secret=SECRET)
        assert deliver(hook, "job.succeeded", {"job_id": "j1"}, first_wait=0.01, max_wait=0.05)
        assert rx.events() == ["job.succeeded"] * 3 and rx.verified()
        headers, body = rx.deliveries[-1]
        assert headers["x-synthgen-signature"] == sign(SECRET, headers["x-synthgen-timestamp"], body)
        assert json.loads(body)["data"] == {"job_id": "j1"}
        assert len({json.loads(b)["delivery"] for _, b in rx.deliveries}) == 1  # one delivery id across retries
        tampered = sign(SECRET, headers["x-synthgen-timestamp"], body + b" ")
        assert tampered != headers["x-synthgen-signature"]
    finally:
        rx.close()
    gone = WebhookSpec(url="http://127.0.0.1:9/hook")  # nothing listens: retried, then given up
    t0 = time.monotonic()
    assert not deliver(gone, "job.failed", {}, attempts=3, first_wait=0.01, max_wait=0.02)
    assert time.monotonic() - t0 < 5


@pytest.fixture
def service(tmp_path, monkeypatch):
    """API in-process, one worker process, loopback model servers, a loopback Hub and a tiny trainer."""
    from synthgen.trainer import smoke

    root = tmp_path
    JobStore.open(f"sqlite:///{root}/synthgen.db").dispose()
    write_folder(root / "imgs", 4)
    corpus = [*CAPTIONS_JA.values(), GENERIC_QUESTION, GENERIC_ANSWER] * 3
    smoke.save_vision(root / "models" / "v")
    smoke.save_lm(root / "models" / "lm", corpus)
    with LoopbackHub() as hub, LoopbackServer(image_responder()) as vlm, LoopbackServer() as llm:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # the API process's pushes (POST .../publish)
        env = worker_env(root)
        env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0")
        env.pop("HF_TOKEN", None)
        log = open(root / "worker.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "synthgen.service.cli", "worker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        rx = Receiver()
        try:
            with TestClient(create_app(settings_for(root))) as client:
                yield client, root, hub, vlm, llm, rx
        finally:
            stop(proc)
            rx.close()
            log.close()


def _train_config() -> dict:
    return {"model": {"vision": "models/v", "lm": "models/lm"}, "data": {"max_length": 96, "num_workers": 0},
            "stages": [{"name": "pretrain", "learning_rate": 1e-2, "max_steps": 2, "batch_size": 2}],
            "output_dir": "models/chained", "precision": "fp32", "report_to": [], "logging_steps": 1}


def _job(client, body):
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _chain_done(client, job_id, timeout=240):
    def done():
        s = client.get(f"/v1/jobs/{job_id}").json()
        steps = s.get("chain") or []
        return s if steps and all(x["state"] in ("succeeded", "failed", "skipped") for x in steps) else None
    return wait_for(done, timeout, f"job {job_id}'s chain to end")


def test_chained_job_generates_publishes_and_trains(service):
    client, root, _hub, vlm, _, rx = service
    job_id = _job(client, {
        "generator": "caption-translate", "n": 4, "params": {"source": "imgs"},
        "roles": {"default": {"base_url": vlm.base_url, "model": "vlm-m"}},
        "publish": {"local_dir": "published/ja-captions", "license": "cc-by-4.0"},
        "then": {"train": _train_config()},
        "webhooks": [{"url": rx.url, "secret": SECRET}]})
    job = _chain_done(client, job_id)
    assert job["status"] == "succeeded"
    publish, train = job["chain"]
    assert publish["name"] == "publish" and publish["state"] == "succeeded", publish
    assert publish["result"]["local_dir"] == "published/ja-captions" and publish["result"]["rows"] == 4
    assert train["name"] == "train" and train["state"] == "succeeded", train
    # The published folder loads with load_dataset, row for row the job's data.
    ds = datasets.load_dataset(str(root / "published" / "ja-captions"), split="train", cache_dir=str(root / "c"))
    assert ds["key"] == datasets.load_from_disk(str(root / job["out"]))["key"]
    # The training ran through /v1/trainings' machinery and left a model with a model card.
    trainings = client.get("/v1/trainings").json()
    assert trainings["total"] == 1 and trainings["items"][0]["id"] == train["result"]["training_id"]
    # It trained on the published copy, loaded as a user of the data would (config + split).
    source = trainings["items"][0]["config"]["data"]["sources"][0]
    assert source["path"].endswith("published/ja-captions") and source["split"] == "train" and source["config"]
    model = root / train["result"]["output_dir"]
    assert (model / "config.json").exists()
    card = (model / "README.md").read_text(encoding="utf-8")
    assert "published/ja-captions" in card and "pipeline_tag: image-text-to-text" in card
    wait_for(lambda: "train.succeeded" in rx.events(), 20, "the train.succeeded webhook")
    assert rx.events() == ["job.succeeded", "publish.succeeded", "train.started", "train.succeeded"]
    assert rx.verified()
    assert SECRET not in json.dumps(client.get(f"/v1/jobs/{job_id}").json())


def test_failed_publish_keeps_data_and_can_be_retried(service):
    client, root, hub, _, llm, rx = service
    job_id = _job(client, {
        "generator": "persona-qa", "n": 2, "roles": {"default": {"base_url": llm.base_url, "model": "llm-m"}},
        "publish": {"repo_id": "org/ja-qa"}, "then": {"train": _train_config()},
        "webhooks": [{"url": rx.url, "events": ["publish.failed", "publish.succeeded"]}]})
    job = _chain_done(client, job_id)
    publish, train = job["chain"]
    assert publish["state"] == "failed" and "401" in publish["error"]  # no token anywhere: the Hub says why
    assert train["state"] == "skipped" and train["error"] == "an earlier step failed"
    assert job["status"] == "succeeded" and len(datasets.load_from_disk(str(root / job["out"]))) == 2
    assert not hub.repos
    # Again, with a token for this push only: the API runs it in the background.
    r = client.post(f"/v1/jobs/{job_id}/publish", json={"repo_id": "org/ja-qa", "token": hub.token,
                                                        "config_name": "qa"})
    assert r.status_code == 202, r.text
    assert hub.token not in r.text
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["chain"][0]["state"] == "succeeded", 60, "publish")
    repo = hub.repo("org/ja-qa")
    assert repo.private and "qa/train-00000-of-00001.parquet" in repo.files
    shown = client.get(f"/v1/jobs/{job_id}").json()
    assert hub.token not in json.dumps(shown) and shown["chain"][0]["result"]["rows"] == 2
    wait_for(lambda: rx.events() == ["publish.failed", "publish.succeeded"], 20, "both publish webhooks")
    assert client.post(f"/v1/jobs/{job_id}/publish", json={"local_dir": "../outside"}).status_code == 422


def test_chain_parts_outside_policy_are_refused_at_submit(service):
    client, _, _, _, llm, _ = service
    base = {"generator": "persona-qa", "n": 1, "roles": {"default": {"base_url": llm.base_url, "model": "m"}}}
    r = client.post("/v1/jobs", json={**base, "webhooks": [{"url": "http://203.0.113.9/hook"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "webhooks", 0, "url"]
    r = client.post("/v1/jobs", json={**base, "publish": {"local_dir": "../../etc"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "publish", "local_dir"]
    r = client.post("/v1/jobs", json={**base, "publish": {"local_dir": "p"},
                                      "then": {"train": {**_train_config(), "output_dir": "/etc/x"}}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "then", "train"]
    r = client.post("/v1/jobs", json={**base, "publish": {"repo_id": "a/b", "local_dir": "p"}})
    assert r.status_code == 422
