"""API keys, secrets that never leave the store, request size limits, confined output paths."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from test_service_api import job_body, settings_for

from synthgen.loopback_server import LoopbackServer
from synthgen.service.api import create_app
from synthgen.service.store.models import JobSecretSpec
from synthgen.service.worker import run_claimed

KEY_A, KEY_B = "key-alpha-0123456789", "key-beta-9876543210"
ROLE_SECRET, HUB_SECRET = "sk-role-secret-5f1c2", "hf_hub_secret_9a8b7"


@pytest.fixture
def locked(tmp_path):
    settings = settings_for(tmp_path, api_keys=[SecretStr(KEY_A), SecretStr(KEY_B)])
    with TestClient(create_app(settings)) as client:
        yield client


def test_api_keys_required_when_configured(locked):
    body = job_body("http://127.0.0.1:9/v1", 2)
    assert locked.get("/v1/jobs").status_code == 401
    assert locked.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert locked.get("/v1/jobs", headers={"Authorization": f"Basic {KEY_A}"}).status_code == 401
    assert locked.post("/v1/jobs", json=body).status_code == 401
    assert locked.get("/v1/generators").status_code == 401 and locked.get("/v1/metrics").status_code == 401
    for key in (KEY_A, KEY_B):
        auth = {"Authorization": f"Bearer {key}"}
        assert locked.post("/v1/jobs", json=body, headers=auth).status_code == 201
        assert locked.get("/v1/jobs", headers=auth).json()["total"] >= 1
    assert locked.get("/v1/healthz").status_code == 200 and locked.get("/healthz").status_code == 200
    schema = locked.get("/v1/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_dashboard_login_cookie_reads_but_never_writes(locked):
    r = locked.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = locked.post("/login", content=b"key=nope", headers={"content-type": "application/x-www-form-urlencoded"},
                    follow_redirects=False)
    assert r.headers["location"].startswith("/login?failed")
    r = locked.post("/login", content=f"key={KEY_A}".encode(),
                    headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    assert locked.get("/").status_code == 200  # the cookie jar now holds the key
    assert locked.get("/v1/jobs").status_code == 200  # reads with the cookie
    assert locked.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 2)).status_code == 401


def test_no_keys_means_open(tmp_path):
    with TestClient(create_app(settings_for(tmp_path))) as client:
        assert client.get("/v1/jobs").status_code == 200 and client.get("/").status_code == 200


def test_secrets_are_stored_for_the_worker_but_never_returned_or_logged(tmp_path, caplog):
    seen_auth: list[str | None] = []
    srv = LoopbackServer()
    real_chat = srv._chat

    async def recording(request):  # type: ignore[no-untyped-def]
        seen_auth.append(request.headers.get("Authorization"))
        return await real_chat(request)

    srv._chat = recording  # type: ignore[method-assign]
    settings = settings_for(tmp_path)
    with srv, TestClient(create_app(settings)) as client:
        body = job_body(srv.base_url, 3, publish={"repo_id": "me/data", "token": HUB_SECRET})
        body["roles"]["default"]["api_key"] = ROLE_SECRET
        body.pop("publish")  # publishing needs the Hub; the token's handling is checked below
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 201
        job_id = r.json()["id"]
        with_publish = {**job_body(srv.base_url, 3), "publish": {"repo_id": "me/data", "token": HUB_SECRET}}
        r2 = client.post("/v1/jobs", json=with_publish)
        assert r2.status_code == 201 and HUB_SECRET not in r2.text and "**********" in r2.text
        client.post(f"/v1/jobs/{r2.json()['id']}/cancel")
        # a 422 must not echo a secret that came with the invalid part of the body
        bad = job_body(srv.base_url, 3)
        bad["roles"]["writer"] = {"api_key": ROLE_SECRET, "temperature": "hot"}
        r3 = client.post("/v1/jobs", json=bad)
        assert r3.status_code == 422 and ROLE_SECRET not in r3.text
        store = client.app.state.store
        with store.session() as s:
            stored = s.scalar(select(JobSecretSpec.spec_json).where(JobSecretSpec.job_id == job_id))
        assert ROLE_SECRET in stored  # the worker needs it
        claimed = store.claim("in-test-worker")
        assert claimed is not None and claimed.id == job_id
        with caplog.at_level(logging.DEBUG):
            final = asyncio.run(run_claimed(store, claimed, settings, "in-test-worker", threading.Event()))
        assert final == "succeeded"
        assert seen_auth and all(a == f"Bearer {ROLE_SECRET}" for a in seen_auth)
        assert ROLE_SECRET not in caplog.text and HUB_SECRET not in caplog.text
        pages = [r.text, client.get(f"/v1/jobs/{job_id}").text, client.get("/v1/jobs").text,
                 client.get(f"/jobs/{job_id}").text, client.get("/").text,
                 client.get(f"/v1/jobs/{job_id}/records").text, client.get("/v1/metrics").text]
        assert not any(ROLE_SECRET in p or HUB_SECRET in p for p in pages)
        manifest = (tmp_path / "jobs" / job_id / "manifest.json").read_text()
        assert ROLE_SECRET not in manifest


def test_oversized_bodies_get_413(tmp_path):
    settings = settings_for(tmp_path, max_request_bytes=4096)
    with TestClient(create_app(settings)) as client:
        big = job_body("http://127.0.0.1:9/v1", 2, params={"tasks": [{"name": "t", "description": "x" * 8000}]})
        r = client.post("/v1/jobs", json=big)
        assert r.status_code == 413
        # chunked, no Content-Length: counted while it streams in
        chunks = (b'{"generator": "persona-qa", "params": {"x": "' + b"y" * 1000 for _ in range(10))
        r = client.post("/v1/jobs", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert client.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 2)).status_code == 201


@pytest.mark.parametrize("out", ["../escape", "a/../../escape", "/etc/synthgen", "/tmp", "link/inside", ".", "a\x00b"])
def test_output_paths_stay_under_the_data_root(tmp_path, out):
    (tmp_path / "outside").mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with TestClient(create_app(settings_for(root))) as client:
        r = client.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 2, out=out))
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "out"]
        ok = client.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 2, out="runs/mine"))
        assert ok.status_code == 201 and ok.json()["out"] == "runs/mine"
        inside = client.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 2, out=str(root / "runs" / "abs")))
        assert inside.status_code == 201 and inside.json()["out"] == "runs/abs"
        again = client.post("/v1/jobs", json=job_body("http://127.0.0.1:9/v1", 2, out="runs/mine"))
        assert again.status_code == 409  # a queued job already writes there
