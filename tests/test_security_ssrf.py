"""What a REST job may make the server fetch (#12 item 3): base_url only to allowed endpoints
(a role's key never goes anywhere else), image downloads refused to private and loopback
addresses unless the operator allows them, with one reason whatever lies behind the address."""

from __future__ import annotations

import asyncio
import http.server
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from image_responders import image_responder
from test_service_api import settings_for, status_of, wait_for

from synthgen import policy
from synthgen.generators.images.download import REFUSED, DownloadFailed, DownloadLimits, open_downloader
from synthgen.generators.images.samples import draw, encode
from synthgen.loopback_server import LoopbackServer, Reply
from synthgen.service.api import create_app
from synthgen.service.worker import run_claimed, run_worker

KEY = "sk-allowed-only-7c1d9e"


class ImageServer:
    """A plain threaded HTTP server on loopback that counts every request it gets."""

    def __init__(self, pictures: dict[str, bytes]) -> None:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = pictures.get(self.path.lstrip("/"))
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self) -> ImageServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def recording(server: LoopbackServer, seen: list[str | None]) -> LoopbackServer:
    real = server._chat

    async def chat(request):  # type: ignore[no-untyped-def]
        seen.append(request.headers.get("Authorization"))
        return await real(request)

    server._chat = chat  # type: ignore[method-assign]
    return server


def test_endpoint_rules():
    rules = policy.Policy(data_root=__import__("pathlib").Path("/srv"), allowed_endpoints=(
        "loopback", "vllm.internal:8001", "https://api.example.com", "10.1.0.0/16", "*.models.lan"))
    allowed = ["http://127.0.0.1:1/v1", "http://localhost:9/v1", "http://[::1]:80/v1", "http://vllm.internal:8001/v1",
               "https://api.example.com/v1", "http://10.1.2.3:8000/v1", "http://a.models.lan/v1"]
    refused = ["http://vllm.internal:8002/v1", "http://api.example.com/v1", "https://api.example.com:8443/v1",
               "http://10.2.0.1/v1", "http://169.254.169.254/latest", "http://models.lan.evil.com/v1",
               "http://user:pw@127.0.0.1:1/v1", "ftp://127.0.0.1/v1", "http:///v1"]
    assert all(rules.endpoint_allowed(u) for u in allowed)
    assert not any(rules.endpoint_allowed(u) for u in refused)
    public = ["93.184.216.34", "2606:4700::1111"]
    private = ["127.0.0.1", "10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "::1", "fe80::1",
               "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "100.64.0.1"]
    assert all(rules.download_address_allowed(a) for a in public)
    assert not any(rules.download_address_allowed(a) for a in private)


def test_base_url_must_be_an_allowed_endpoint_and_the_key_goes_nowhere_else(tmp_path):
    seen_a: list[str | None] = []
    seen_b: list[str | None] = []
    with recording(LoopbackServer(), seen_b) as b:
        redirect = Reply(status=307, headers={"Location": f"{b.base_url}/chat/completions"})
        with recording(LoopbackServer(lambda _body: redirect), seen_a) as a:
            settings = settings_for(tmp_path, allowed_endpoints=[f"127.0.0.1:{a.port}"])
            with TestClient(create_app(settings)) as client:
                for url in (b.base_url, f"http://localhost:{b.port}/v1", f"http://u:p@127.0.0.1:{a.port}/v1",
                            "http://10.0.0.1:8000/v1", "http://169.254.169.254/v1"):
                    r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1, "roles": {
                        "default": {"base_url": url, "model": "M", "api_key": KEY}}})
                    assert r.status_code == 422, url
                    assert KEY not in r.text
                    # credentials in the URL: the spec itself may already refuse them
                    assert r.json()["detail"][0]["type"] == "endpoint_not_allowed" or "@" in url
                pool = {"base_urls": [a.base_url, b.base_url], "model": "M", "api_key": KEY}  # one bad server in a pool
                r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1, "roles": {"default": pool}})
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "roles", "writer", "base_urls"]
                r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1, "flush_seconds": 0.2, "roles": {
                    "writer": {"base_url": a.base_url, "model": "M", "api_key": KEY},
                    "answerer": {"base_url": a.base_url, "model": "M", "api_key": KEY}}})
                assert r.status_code == 201, r.text
                store = client.app.state.store
                claimed = store.claim("w")
                final = asyncio.run(run_claimed(store, claimed, settings, "w", threading.Event()))
                job = status_of(client, claimed.id)
    # The allowed endpoint redirected every call elsewhere: the engine follows no redirect, so
    # nothing reached the other server (not even without the key) and the records failed.
    assert final == "incomplete" and job["progress"]["failures_by_reason"] == {"request_http_307": 3}, job
    assert seen_a and all(h == f"Bearer {KEY}" for h in seen_a)
    assert seen_b == []


def test_downloads_to_private_addresses_are_refused_alike():
    pictures = {"p.png": encode(draw(1))}
    rules = policy.Policy(data_root=__import__("pathlib").Path("/srv"))
    closed = ImageServer({})
    closed_port = closed.port
    closed.server.server_close()  # a port nothing listens on

    async def fetch_all(urls):
        out = {}
        async with open_downloader(DownloadLimits(timeout=5, attempts=1)) as dl:
            for url in urls:
                try:
                    out[url] = len(await dl.fetch(url))
                except DownloadFailed as exc:
                    out[url] = exc.reason
        return out

    previous = policy.current()
    with ImageServer(pictures) as img:
        urls = [f"http://127.0.0.1:{img.port}/p.png", f"http://localhost:{img.port}/p.png",
                f"http://[::ffff:127.0.0.1]:{img.port}/p.png", f"http://127.0.0.1:{closed_port}/p.png",
                f"http://127.0.0.1:{img.port}/missing.png"]
        try:
            policy.activate(rules)
            refused = asyncio.run(fetch_all(urls))
            assert set(refused.values()) == {REFUSED} and img.hits == 0  # open, closed, 404: all the same
            policy.activate(policy.Policy(data_root=rules.data_root, allow_private_downloads=True))
            allowed = asyncio.run(fetch_all(urls[:2]))
            assert all(isinstance(v, int) and v > 0 for v in allowed.values()) and img.hits == 2
        finally:
            policy.activate(previous)


@pytest.mark.parametrize("allow_private", [False, True])
def test_image_url_downloads_in_a_worker_follow_the_policy(tmp_path, allow_private):
    pictures = {f"p{i}.png": encode(draw(i)) for i in range(3)}
    with ImageServer(pictures) as img, LoopbackServer(image_responder()) as model:
        urls = [f"http://127.0.0.1:{img.port}/{name}" for name in pictures]
        pq.write_table(pa.table({"url": urls}), tmp_path / "links.parquet")
        settings = settings_for(tmp_path, allow_private_downloads=allow_private)
        with TestClient(create_app(settings)) as client:
            r = client.post("/v1/jobs", json={
                "generator": "caption-translate", "n": 2, "max_inputs": 3, "flush_seconds": 0.2,
                "params": {"source": "links.parquet", "url_column": "url", "caption_language": "ja",
                           "conversation": "one"},
                "roles": {"default": {"base_url": model.base_url, "model": "M"}}})
            assert r.status_code == 201, r.text
            done = threading.Event()
            worker = threading.Thread(target=run_worker, kwargs={"settings": settings, "max_jobs": 1,
                                                                 "shutdown": done})
            worker.start()
            try:
                job = wait_for(lambda: (s := status_of(client, r.json()["id"]))["status"] not in ("queued", "running")
                               and s, 120, "the job to end")
            finally:
                done.set()
                worker.join(30)
    if allow_private:
        assert job["status"] == "succeeded" and img.hits >= 2
    else:
        assert job["status"] != "succeeded" and img.hits == 0
        assert job["progress"]["failures_by_reason"] == {REFUSED: 3}


def test_a_quality_judge_role_follows_the_same_endpoint_rules(tmp_path):
    with TestClient(create_app(settings_for(tmp_path))) as client:
        def post(role):
            return client.post("/v1/jobs", json={
                "generator": "persona-qa", "n": 1, "roles": {"default": {"base_url": "http://127.0.0.1:9/v1", "model": "M"}},
                "quality": [{"step": "judge", "role": role}]})

        r = post({"base_url": "http://169.254.169.254/v1", "model": "J", "api_key": KEY})
        assert r.status_code == 422 and KEY not in r.text
        assert r.json()["detail"][0]["loc"] == ["body", "quality", 0, "role", "base_url"]
        r = post({"base_url": "http://127.0.0.1:9/v1", "model": "J", "options": {"trust_remote_code": True}})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "server_setting"
        assert post({"base_url": "http://127.0.0.1:9/v1", "model": "J"}).status_code == 201


def test_a_worker_refuses_a_queued_spec_the_narrowed_policy_no_longer_allows(tmp_path):
    seen: list[str | None] = []
    with recording(LoopbackServer(), seen) as srv:
        settings = settings_for(tmp_path)
        with TestClient(create_app(settings)) as client:  # queued while loopback was allowed
            job_id = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1, "roles": {
                "default": {"base_url": srv.base_url, "model": "M", "api_key": KEY}}}).json()["id"]
            narrowed = settings.model_copy(update={"allowed_endpoints": ["vllm.internal"]})
            previous = policy.current()
            policy.activate(policy.Policy.from_settings(narrowed))
            try:
                store = client.app.state.store
                final = asyncio.run(run_claimed(store, store.claim("w"), narrowed, "w", threading.Event()))
            finally:
                policy.activate(previous)
            job = status_of(client, job_id)
    assert final == "failed" and "outside this server's policy" in job["error"] and KEY not in job["error"]
    assert seen == []  # not one request reached the server
