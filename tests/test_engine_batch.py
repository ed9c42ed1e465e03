"""The openai-batch engine against a loopback server speaking the Files and Batches APIs.

Proves: a run of persona-qa comes back exact through batches (one batch per conversation step);
a per-line error fails only its record and a retryable one goes out in a later batch; a batch
that expires is retried; a run stopped while its batch is out resumes onto that batch instead of
paying again; the API key reaches the server and nothing under the state folder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import orjson
import pytest
from aiohttp import web
from gen_responders import persona_qa_responder
from pydantic import BaseModel

from synthgen.engine import backends
from synthgen.engine.errors import RequestError
from synthgen.engine.messages import ChatResult
from synthgen.engine.openai_batch import _line_result, default_state_dir
from synthgen.engine.plugin import Generator, InputContext, RecordContext
from synthgen.engine.roles import resolve_roles
from synthgen.engine.runner import RunStats, run_job
from synthgen.loopback_server import Reply, last_user_text
from synthgen.settings import get_settings
from synthgen.spec import JobSpec, RoleConfig

KEY = "sk-batch-test-7f3a9c1e"


class BatchServer:
    """Files + Batches endpoints on 127.0.0.1. A batch is `validating` when created, `in_progress`
    at the first poll, and ends `delay` seconds after creation unless `hold` is set; `expire`
    makes the next batches end expired without output. Each line is answered by `responder`."""

    def __init__(self, responder: Any, *, delay: float = 0.05) -> None:
        self.responder = responder
        self.delay = delay
        self.hold = False
        self.hold_from = 0  # batches from this number on stay in progress (0: none)
        self.expire = 0
        self.fail_create: list[bool] = []  # per POST /v1/batches ahead: answer 500 (True: after creating it)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.inputs: list[list[dict[str, Any]]] = []  # the lines of each submitted batch, in order
        self.calls: Counter[str] = Counter()
        self.auth: set[str | None] = set()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> BatchServer:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._seen])
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{id}", self._retrieve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @web.middleware
    async def _seen(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
        self.calls[f"{request.method} {route}"] += 1
        self.auth.add(request.headers.get("Authorization"))
        return await handler(request)

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["purpose"] == "batch"
        data = form["file"].file.read()  # type: ignore[union-attr]
        file_id = self._store(data)
        return web.json_response({"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                  "filename": "input.jsonl", "purpose": "batch", "status": "processed"})

    def _store(self, data: bytes) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = data
        return file_id

    async def _content(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[request.match_info["id"]], content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_create:
            created = self.fail_create.pop(0)
            if created:
                await self._create_batch(body)
            return web.json_response({"error": {"message": "injected"}}, status=500)
        return web.json_response(await self._create_batch(body))

    async def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        assert body["endpoint"] == "/v1/chat/completions" and body["completion_window"] == "24h"
        lines = [orjson.loads(x) for x in self.files[body["input_file_id"]].splitlines()]
        assert all(x["method"] == "POST" and x["url"] == "/v1/chat/completions" for x in lines)
        self.inputs.append(lines)
        batch_id = f"batch_{len(self.batches) + 1}"
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
            "_t": time.monotonic(), "_expire": self.expire > 0}
        self.expire = max(0, self.expire - 1)
        return self._public(batch_id)

    def _public(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}

    async def _list(self, _request: web.Request) -> web.Response:
        data = [self._public(b) for b in reversed(self.batches)]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["id"]
        if batch_id not in self.batches:
            return web.json_response({"error": {"message": "no such batch"}}, status=404)
        batch = self.batches[batch_id]
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif (batch["status"] == "in_progress" and not self.hold and time.monotonic() - batch["_t"] >= self.delay
              and not (self.hold_from and int(batch_id.split("_")[1]) >= self.hold_from)):
            self._finish(batch)
        return web.json_response(self._public(batch_id))

    def _finish(self, batch: dict[str, Any]) -> None:
        if batch["_expire"]:
            batch["status"] = "expired"
            return
        out, err = [], []
        for line in (orjson.loads(x) for x in self.files[batch["input_file_id"]].splitlines()):
            answer = self.responder(line["body"])
            reply = answer if isinstance(answer, Reply) else Reply(text=answer)
            cid = line["custom_id"]
            if reply.status != 200:
                err.append({"id": f"req_{cid}", "custom_id": cid, "error": None, "response": {
                    "status_code": reply.status, "request_id": f"r{cid}",
                    "body": {"error": {"message": "injected", "type": "server_error"}}}})
                continue
            completion = {"id": f"c{cid}", "object": "chat.completion", "model": line["body"]["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": reply.text}}],
                          "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}
            out.append({"id": f"req_{cid}", "custom_id": cid, "error": None,
                        "response": {"status_code": 200, "request_id": f"r{cid}", "body": completion}})
        batch["output_file_id"] = self._store(b"".join(orjson.dumps(x) + b"\n" for x in out)) if out else None
        batch["error_file_id"] = self._store(b"".join(orjson.dumps(x) + b"\n" for x in err)) if err else None
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        batch["status"] = "completed"

    def lines(self) -> list[dict[str, Any]]:
        return [line for batch in self.inputs for line in batch]


FAST = {"batch_window_s": 0.3, "poll_interval_s": 0.02}


def _roles(srv: BatchServer, **options: Any) -> dict[str, Any]:
    return {"default": {"engine": "openai-batch", "base_url": srv.base_url, "model": "M", "api_key": KEY,
                        "options": {**FAST, **options}}}


def test_persona_qa_through_batches_is_exact(tmp_path: Path) -> None:
    async def go() -> tuple[Any, BatchServer]:
        async with BatchServer(persona_qa_responder) as srv:
            spec = JobSpec(generator="persona-qa", n=6, out=str(tmp_path / "out"), params={"turns": 2},
                           roles=_roles(srv, state_dir=str(tmp_path / "state")))
            return await run_job(spec), srv

    result, srv = asyncio.run(go())
    assert result.stats.state == "succeeded"
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(ds) == 6 and all(len(r["messages"]) == 4 for r in ds)
    # question, answer, follow-up, answer: the six conversations move in step, one batch per step
    assert srv.calls["POST /v1/batches"] == 4 and srv.calls["POST /v1/files"] == 4
    assert [len(b) for b in srv.inputs] == [6, 6, 6, 6]
    assert sum(r.usage.requests for r in result.stats.roles.values()) == 24
    assert result.stats.roles["writer"].usage.completion_tokens == 12 * 5
    # every request once, its body the chat-completions body the engine would have posted
    assert len({x["custom_id"] for x in srv.lines()}) == 24
    assert all(x["body"]["model"] == "M" and x["body"]["max_tokens"] == 1024 for x in srv.lines())
    assert srv.auth == {f"Bearer {KEY}"}
    assert not list((tmp_path / "state").glob("*.json"))  # every result was taken: nothing left to resume


class P(BaseModel):
    inputs: int = 1000


def _count(ctx: InputContext[P]) -> Iterator[dict[str, Any]]:
    yield from ({"i": i} for i in range(ctx.params.inputs))


async def _ask(item: dict[str, Any], ctx: RecordContext[P]) -> list[dict[str, Any]]:
    reply = await ctx.role("writer").chat([{"role": "user", "content": f"問題 {item['i']} を解いてください。"}])
    return [{"i": item["i"], "text": reply.text}]


ONE_SHOT = Generator[P](name="one-shot", version="1", description="test", params_model=P, roles=("writer",),
                        reads="nothing", inputs=_count, generate=_ask,
                        features=lambda _p: datasets.Features({"i": datasets.Value("int64"),
                                                               "text": datasets.Value("string")}))


def _i(body: dict[str, Any]) -> int:
    match = re.search(r"問題 (\d+)", last_user_text(body))
    assert match
    return int(match.group(1))


def test_a_line_error_fails_its_record_only_and_a_retryable_one_goes_out_again(tmp_path: Path) -> None:
    seen: Counter[int] = Counter()

    def responder(body: dict[str, Any]) -> str | Reply:
        i = _i(body)
        seen[i] += 1
        if i == 3:
            return Reply(status=400)
        if i == 1 and seen[i] == 1:
            return Reply(status=500)
        return f"答えは {i} です。"

    async def go() -> tuple[Any, BatchServer]:
        async with BatchServer(responder, delay=0.4) as srv:
            # six inputs for five records: the one that fails for good leaves no room for timing
            spec = JobSpec(generator="one-shot", n=5, out=str(tmp_path / "out"), params={"inputs": 6},
                           roles=_roles(srv, state_dir=str(tmp_path / "state"), max_batch_requests=2))
            return await run_job(spec, generator=ONE_SHOT), srv

    result, srv = asyncio.run(go())
    assert result.stats.state == "succeeded"
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert sorted(ds["i"]) == [0, 1, 2, 4, 5]
    assert all(r["text"] == f"答えは {r['i']} です。" for r in ds)
    assert result.stats.failures_by_reason == {"request_http_400": 1}
    assert result.stats.roles["writer"].usage.retries == 1
    assert seen == {0: 1, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1}
    sizes = [len(b) for b in srv.inputs]
    assert sizes[:2] == [2, 2] and max(sizes) == 2 and sum(sizes) == 7  # max_batch_requests splits a window


def test_an_expired_batch_is_retried_in_a_later_one(tmp_path: Path) -> None:
    async def go() -> tuple[Any, BatchServer]:
        async with BatchServer(lambda b: f"答えは {_i(b)} です。") as srv:
            srv.expire = 1
            spec = JobSpec(generator="one-shot", n=4, out=str(tmp_path / "out"),
                           roles=_roles(srv, state_dir=str(tmp_path / "state")))
            return await run_job(spec, generator=ONE_SHOT), srv

    result, srv = asyncio.run(go())
    assert result.stats.state == "succeeded" and result.stats.failed == 0
    assert sorted(datasets.load_from_disk(str(tmp_path / "out"))["i"]) == [0, 1, 2, 3]
    assert srv.batches["batch_1"]["status"] == "expired" and len(srv.inputs[0]) == 4
    later = Counter(_i(x["body"]) for batch in srv.inputs[1:] for x in batch)
    assert later == {0: 1, 1: 1, 2: 1, 3: 1}  # each request of the expired batch went out once more
    assert result.stats.roles["writer"].usage.retries == 4


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SYNTHGEN_DATA_ROOT", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_a_stopped_run_resumes_onto_its_pending_batch(tmp_path: Path, data_root: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Stopped while its first batch is out; the resumed run attaches to that batch (no second
    submission of those requests) and ends exact. The state sits in the default folder."""
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"

    def spec(srv: BatchServer, **kw: Any) -> JobSpec:
        # flush_seconds: the runner looks at its stop event between waits of this length
        return JobSpec(generator="persona-qa", n=5, out=str(out), params={"turns": 2}, roles=_roles(srv),
                       flush_seconds=0.1, **kw)

    async def go() -> tuple[Any, Any, BatchServer, list[dict[str, Any]], dict[str, bytes]]:
        async with BatchServer(persona_qa_responder) as srv:
            srv.hold = True
            stop = asyncio.Event()
            stats = RunStats(target=5)
            task = asyncio.create_task(run_job(spec(srv), stats=stats, stop=stop))
            while not srv.calls["POST /v1/batches"] or srv.calls["GET /v1/batches/{id}"] < 2:
                await asyncio.sleep(0.01)
            stop.set()
            first = await task
            state = default_state_dir(data_root, srv.base_url, "M")
            entries = [orjson.loads(p.read_bytes()) for p in state.glob("*.json")]
            files = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}  # state and run folder
            srv.hold = False
            second = await run_job(spec(srv, resume=True))
            return first, second, srv, entries, files

    first, second, srv, entries, files = asyncio.run(go())
    assert first.stats.state == "stopped" and first.stats.records == 0
    assert len(entries) == 1 and entries[0]["batch_id"] == "batch_1" and len(entries[0]["requests"]) == 5
    assert second.stats.state == "succeeded"
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 5 and len(set(ds["key"])) == 5
    # 4 steps, 4 batches of 5 requests: the resume submitted no request of the pending batch again
    assert srv.calls["POST /v1/batches"] == 4 and [len(b) for b in srv.inputs] == [5, 5, 5, 5]
    assert srv.auth == {f"Bearer {KEY}"}
    state = default_state_dir(data_root, srv.base_url, "M")
    assert state.is_dir() and not list(state.glob("*.json"))
    # the key went to the server only: not into the state files (read while the batch was out) nor logs
    assert entries[0]["input_file_id"] == "file-1" and any(name.endswith(".lock") for name in files)
    assert not [name for name, data in files.items() if KEY.encode() in data]
    assert KEY not in caplog.text and "batch_1" in caplog.text


def test_check_names_what_a_role_lacks() -> None:
    def resolve(**cfg: Any) -> Any:
        return resolve_roles({"default": RoleConfig.model_validate({"engine": "openai-batch", **cfg})}, ("writer",))

    with pytest.raises(ValueError, match="needs base_url"):
        resolve(model="M")
    with pytest.raises(ValueError, match="no model name"):
        resolve(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="one server"):
        resolve(base_urls=["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"], model="M")
    with pytest.raises(ValueError, match=r"unknown openai-batch options \['batch_window'\]"):
        resolve(base_url="http://127.0.0.1:9/v1", model="M", options={"batch_window": 1})
    with pytest.raises(ValueError, match="poll_interval_s must be a positive number"):
        resolve(base_url="http://127.0.0.1:9/v1", model="M", options={"poll_interval_s": 0})
    with pytest.raises(ValueError, match="at most 50000"):
        resolve(base_url="http://127.0.0.1:9/v1", model="M", options={"max_batch_requests": 50_001})
    cfg = resolve(base_url="http://127.0.0.1:9/v1", model="M")["writer"]
    assert cfg.concurrency == 50_000  # a batch takes what the run can give it


def _client(srv: BatchServer, state: Path, **options: Any) -> Any:
    cfg = RoleConfig.model_validate({"engine": "openai-batch", "base_url": srv.base_url, "model": "M",
                                     "options": {**FAST, "batch_window_s": 0.05, "state_dir": str(state), **options}})
    return backends.get("openai-batch").make(cfg)


ASK = [{"role": "user", "content": "問題 7 を解いてください。"}]


def test_a_submission_whose_answer_was_lost_is_found_again_not_paid_twice(tmp_path: Path) -> None:
    """The server created the batch but the answer never arrived (a 500 here; a crash between
    submitting and writing the batch id is the same): the entry has only its input file, and the
    next caller with that request finds the batch among the server's batches."""
    async def go() -> tuple[list[Any], BatchServer]:
        async with BatchServer(lambda b: f"答えは {_i(b)} です。") as srv:
            srv.fail_create = [True, False]  # created, then answered 500; the second one is refused outright
            first = _client(srv, tmp_path / "s", max_retries=0)
            with pytest.raises(RequestError) as lost:
                await first.complete(ASK, {}, 5)
            assert lost.value.reason == "http_500" and lost.value.retryable
            await first.aclose()
            entry = orjson.loads(next((tmp_path / "s").glob("*.json")).read_bytes())
            assert entry["batch_id"] is None and entry["input_file_id"] == "file-1"
            again = _client(srv, tmp_path / "s", max_retries=0)  # a restarted run
            found = await again.complete(ASK, {}, 5)
            # a request whose batch was never made is submitted again after one retryable refusal
            other = [{"role": "user", "content": "問題 8 を解いてください。"}]
            with pytest.raises(RequestError) as refused:
                await again.complete(other, {}, 5)
            with pytest.raises(RequestError) as missing:
                await again.complete(other, {}, 5)
            last = await again.complete(other, {}, 5)
            await again.aclose()
            return [lost.value, found, refused.value, missing.value, last], srv

    (_, found, refused, missing, last), srv = asyncio.run(go())
    assert found.text == "答えは 7 です。" and last.text == "答えは 8 です。"
    assert refused.reason == "http_500" and missing.reason == "batch_not_submitted" and missing.retryable
    assert [len(b) for b in srv.inputs] == [1, 1] and list(srv.batches) == ["batch_1", "batch_2"]
    assert srv.calls["POST /v1/batches"] == 3 and srv.calls["POST /v1/files"] == 3  # the refused file, uploaded again
    assert not list((tmp_path / "s").glob("*.json"))


def test_a_cancelled_caller_leaves_its_batch_to_the_next_one(tmp_path: Path) -> None:
    async def go() -> tuple[Any, Any, BatchServer]:
        async with BatchServer(lambda b: f"答えは {_i(b)} です。", delay=0.1) as srv:
            client = _client(srv, tmp_path / "s")
            waiting = asyncio.create_task(client.complete(ASK, {}, 5))
            while not srv.calls["POST /v1/batches"]:
                await asyncio.sleep(0.005)
            waiting.cancel()
            await asyncio.sleep(0.2)  # the batch ends on the server meanwhile
            same = await client.complete(ASK, {}, 5)
            # another run holding a pending batch locks it: a second client never takes its results
            srv.hold = True
            before = srv.calls["POST /v1/batches"]
            held = asyncio.create_task(client.complete([{"role": "user", "content": "問題 9"}], {}, 5))
            while srv.calls["POST /v1/batches"] == before:
                await asyncio.sleep(0.005)
            held.cancel()
            srv.hold = False
            rival = _client(srv, tmp_path / "s")
            own = await rival.complete([{"role": "user", "content": "問題 9"}], {}, 5)
            await rival.aclose()
            await client.aclose()
            return same, own, srv

    same, own, srv = asyncio.run(go())
    assert same.text == "答えは 7 です。" and own.text == "答えは 9 です。"
    assert srv.calls["POST /v1/batches"] == 3 and [len(b) for b in srv.inputs] == [1, 1, 1]


def test_output_and_error_lines_become_results_or_reasons() -> None:
    completion = {"choices": [{"message": {"content": "はい"}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    ok = _line_result({"custom_id": "a", "response": {"status_code": 200, "body": completion}}, "M")
    assert ok == ChatResult(text="はい", finish_reason="stop", prompt_tokens=3, completion_tokens=1, model="M")
    assert _line_result({"custom_id": "a", "response": completion}, "M") == ok  # unwrapped, as some servers write
    bad = _line_result({"custom_id": "a", "response": {"status_code": 400, "body": {"error": {}}}}, "M")
    busy = _line_result({"custom_id": "a", "response": {"status_code": 429, "body": {}}}, "M")
    expired = _line_result({"custom_id": "a", "response": None,
                            "error": {"code": "batch_expired", "message": "not run in time"}}, "M")
    odd = _line_result({"custom_id": "a", "error": {"code": "Invalid Model!"}}, "M")
    assert isinstance(bad, RequestError) and (bad.reason, bad.retryable) == ("http_400", False)
    assert isinstance(busy, RequestError) and (busy.reason, busy.retryable) == ("http_429", True)
    assert isinstance(expired, RequestError) and (expired.reason, expired.retryable) == ("batch_expired", True)
    assert isinstance(odd, RequestError) and (odd.reason, odd.retryable) == ("batch_invalid_model", False)


def test_a_killed_cli_run_resumes_onto_its_pending_batch(tmp_path: Path) -> None:
    """SIGKILL while the first batch is out (no graceful close): `synthgen run --resume` attaches."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with BatchServer(persona_qa_responder) as srv:
                box["srv"], box["done"] = srv, asyncio.Event()
                ready.set()
                await box["done"].wait()
        box["loop"] = asyncio.new_event_loop()
        box["loop"].run_until_complete(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    srv: BatchServer = box["srv"]
    srv.hold = True
    (tmp_path / "batch.yaml").write_text(
        f"roles:\n  default:\n    engine: openai-batch\n    base_url: {srv.base_url}\n    model: m\n"
        f"    options: {{batch_window_s: 0.3, poll_interval_s: 0.05}}\n", encoding="utf-8")
    cli = [sys.executable, "-m", "synthgen.service.cli", "run", "persona-qa", "--n", "3", "--config",
           str(tmp_path / "batch.yaml"), "--out", str(tmp_path / "out"), "-q"]
    env = {**os.environ, "SYNTHGEN_DATA_ROOT": str(tmp_path / "data")}
    try:
        proc = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while srv.calls["GET /v1/batches/{id}"] < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        srv.hold = False
        resumed = subprocess.run([*cli, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        box["loop"].call_soon_threadsafe(box["done"].set)
        thread.join(10)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 3
    assert srv.calls["POST /v1/batches"] == 4 and [len(b) for b in srv.inputs] == [3, 3, 3, 3]


@pytest.mark.parametrize("reuse", [False, True])
def test_a_resume_reuses_the_earlier_steps_only_when_asked(tmp_path: Path, reuse: bool) -> None:
    """persona-qa stopped while its third step (the follow-up) is out. By default the resumed run
    takes the pending third batch but asks steps one and two again (their results were taken);
    with reuse_taken_results it takes those back too and pays for the fourth step only."""
    def spec(srv: BatchServer, **kw: Any) -> JobSpec:
        return JobSpec(generator="persona-qa", n=4, out=str(tmp_path / "out"), params={"turns": 2},
                       roles=_roles(srv, state_dir=str(tmp_path / "state"), reuse_taken_results=reuse),
                       flush_seconds=0.1, **kw)

    async def go() -> tuple[Any, Any, BatchServer]:
        async with BatchServer(persona_qa_responder) as srv:
            srv.hold_from = 3
            stop = asyncio.Event()
            task = asyncio.create_task(run_job(spec(srv), stop=stop))
            while srv.calls["POST /v1/batches"] < 3:
                await asyncio.sleep(0.01)
            stop.set()
            first = await task
            srv.hold_from = 0
            return first, await run_job(spec(srv, resume=True)), srv

    first, second, srv = asyncio.run(go())
    assert first.stats.state == "stopped" and second.stats.state == "succeeded"
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 4
    assert [len(b) for b in srv.inputs] == [4] * (4 if reuse else 6)
    kept = list((tmp_path / "state").glob("*.json"))
    assert len(kept) == (4 if reuse else 0)  # reused results stay until state_ttl_s


def test_a_state_folder_that_cannot_be_written_fails_the_call_at_once(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the state folder should be", encoding="utf-8")

    async def go() -> RequestError:
        async with BatchServer(lambda b: "はい") as srv:
            client = _client(srv, tmp_path / "taken")
            try:
                async with asyncio.timeout(10):
                    with pytest.raises(RequestError) as failed:
                        await client.complete(ASK, {}, 5)
            finally:
                await client.aclose()
            assert srv.calls["POST /v1/batches"] == 0  # nothing submitted without a record of it
            return failed.value

    error = asyncio.run(go())
    assert error.reason == "batch_internal" and not error.retryable and "taken" in str(error)
