"""The dashboard in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from test_service_api import insert_job_for, job_body, settings_for, start_worker, stop, write_image_run

from synthgen.loopback_server import LoopbackServer, japanese_responder, last_user_text
from synthgen.service.api import create_app
from synthgen.service.store import JobStore

playwright = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def site(tmp_path):
    """A real uvicorn server on loopback, serving the app over the temp data root."""
    port = _free_port()
    app = create_app(settings_for(tmp_path))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app, tmp_path
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.mark.slow
def test_gallery_shows_images_beside_their_conversation(site, browser):
    base, app, root = site
    write_image_run(root / "jobs" / "gallery", 3)
    job_id = insert_job_for_app(app, root / "jobs" / "gallery", 3)
    page = browser.new_page()
    page.goto(f"{base}/jobs/{job_id}")
    samples = page.locator("article.sample")
    assert samples.count() == 3
    second = samples.nth(1)
    img = second.locator(".media img")
    img.wait_for()
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert img.evaluate("i => i.naturalWidth") == 9  # the 9x6 PNG written for record 1
    convo = second.locator(".conversation")
    assert "画像1について説明してください。" in convo.inner_text()
    assert "これは1番目の青い画像です。" in convo.inner_text()
    ibox, cbox = img.bounding_box(), convo.bounding_box()
    assert ibox and cbox and ibox["x"] + ibox["width"] <= cbox["x"]  # side by side, image first
    assert "3 of 3" in page.locator("h2", has_text="Samples").inner_text()


@pytest.mark.slow
def test_job_list_updates_live_and_job_page_groups_failures(site, browser):
    base, app, root = site
    asked = {"n": 0}

    def sometimes_english(body):
        if "問題を一つ作って" in last_user_text(body):
            asked["n"] += 1
            if asked["n"] % 4 == 0:
                return "Here is a question in English?"
        return japanese_responder(body)

    worker = start_worker(root)
    try:
        with LoopbackServer(sometimes_english, latency=0.05) as srv:
            store: JobStore = app.state.store
            from fastapi.testclient import TestClient

            with TestClient(app) as client:
                job_id = client.post("/v1/jobs", json=job_body(srv.base_url, 24, concurrency=3)).json()["id"]
            page = browser.new_page()
            page.goto(base + "/")
            row = page.locator(f"tr.job:has(a[href='/jobs/{job_id}'])")
            assert row.count() == 1
            # The page refreshes itself while a job is live; no reload from the test.
            row_status = page.locator(f"tr.job:has(a[href='/jobs/{job_id}']) .status")
            seen = set()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    seen.add(row_status.inner_text(timeout=2000))
                except playwright.Error:
                    continue  # caught mid-refresh
                if "succeeded" in seen:
                    break
                time.sleep(0.3)
            assert "succeeded" in seen and seen & {"queued", "running"}, seen
            assert "24 / 24" in page.locator(f"tr.job:has(a[href='/jobs/{job_id}']) .counts").inner_text()
            page.click(f"a[href='/jobs/{job_id}']")
            page.wait_for_url(f"**/jobs/{job_id}")
            failures = page.locator("table.failures").inner_text()
            assert "not_japanese" in failures
            assert str(store.get(job_id).failed) in failures
            assert page.locator("article.sample").count() == 12
            assert page.locator("article.sample .turn.user").first.inner_text().startswith("user")
            assert page.locator("meta[http-equiv=refresh]").count() == 0  # finished: no more refreshing
    finally:
        stop(worker)


def insert_job_for_app(app, out, n):
    class _Client:  # insert_job_for only needs `.app`
        pass

    c = _Client()
    c.app = app
    return insert_job_for(c, out, n)
