"""The `openai-batch` engine: chat completions through the OpenAI Batch API, at about half price.

Generators still await one `complete()` per request; this backend gathers the calls that arrive
within `batch_window_s` (or until `max_batch_requests` / `max_batch_bytes`) into one JSONL
input file, uploads it (Files API, purpose `batch`), submits it (Batches API), polls the batch
until it ends, and routes each output line back to its caller by `custom_id`. OpenAI and
servers that speak the same batch format (vLLM's batch runner behind an OpenAI-style files and
batches front) work alike.

A batch can take up to 24 hours, so a run is likely to be stopped or killed while one is out.
Each submitted batch is written to a small JSON file under `state_dir` (its ids, and per
request the custom_id and a hash of the request body; never the key nor the text). A resumed
run re-issues the same requests (same inputs, same prompts); a request whose body hash matches
an entry attaches to that batch instead of paying for it again. Entries are locked by the
process that holds them, so two runs sharing a state folder never consume one result twice.

The role's admission and retries sit around this like around any backend; a batch that fails
or expires fails its callers with a retryable error, so the role submits them again in a later
batch. The role's `timeout` bounds each API call (an upload of a large file included); the wait
for a batch is bounded by `batch_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from synthgen.engine.backends import Backend, ChatClient
from synthgen.engine.errors import RequestError, http_error
from synthgen.engine.messages import ChatResult, Message
from synthgen.engine.openai_http import parse_completion
from synthgen.spec import RoleConfig

try:  # advisory locks on entries; without fcntl (Windows) a state folder is for one run at a time
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
# Options a role may set (`roles.<name>.options`), with their defaults. OpenAI takes at most
# 50,000 requests and 200 MB per input file.
OPTIONS: dict[str, Any] = {
    "batch_window_s": 5.0,          # gather calls this long after the first one of a batch
    "max_batch_requests": 50_000,   # ... or until this many are waiting
    "max_batch_bytes": 190 * 1024 * 1024,  # ... or the input file would grow past this
    "poll_interval_s": 15.0,        # between status checks of a batch
    "batch_timeout_s": 26 * 3600.0,  # give up waiting on one request (the 24 h window plus finalizing)
    "completion_window": "24h",
    "max_retries": 5,               # the SDK's own retries of one API call (429, 5xx, connection)
    "state_ttl_s": 7 * 24 * 3600.0,  # entries older than this are forgotten at load
    "state_dir": None,              # default: <data_root>/batches/<hash of base_url and model>
    # Keep results after a caller took them, for a later run: a resumed run then also gets back the
    # earlier steps of multi-step records it had not written. Meant for a state_dir of its own per run
    # (results are otherwise shared with any later job sending the same request).
    "reuse_taken_results": False,
    "extra_body": None,             # merged into every request body (as the openai engine does)
}
POSITIVE = ("batch_window_s", "max_batch_requests", "max_batch_bytes", "poll_interval_s", "batch_timeout_s",
            "state_ttl_s")
# Polls in a row that raise before the callers of a batch are told (retryably; the batch stays known).
MAX_POLL_ERRORS = 8
_SLUG = re.compile(r"[^a-z0-9_]+")


def body_hash(body: dict[str, Any]) -> str:
    """A request's identity across runs: the body with sorted keys (model, messages, sampling)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def default_state_dir(data_root: Path, base_url: str, model: str) -> Path:
    digest = hashlib.sha256(f"{base_url}\n{model}".encode()).hexdigest()[:16]
    return data_root / "batches" / digest


@dataclass
class Entry:
    """One batch as written to `<state_dir>/<id>.json`; `results`, `waiting` and the lock live in memory."""

    id: str
    input_file_id: str
    requests: dict[str, str]  # custom_id -> body hash
    submitted_at: float
    batch_id: str | None = None
    status: str = "submitted"  # submitted | completed (output kept for callers yet to come)
    output_file_id: str | None = None
    error_file_id: str | None = None
    consumed: set[str] = field(default_factory=set)  # taken by a caller, in this run or an earlier one
    failed: set[str] = field(default_factory=set)  # answered with an error: never handed out again
    taken_here: set[str] = field(default_factory=set)  # taken in this process
    results: dict[str, ChatResult] | None = None  # parsed output once the batch ended
    waiting: set[str] = field(default_factory=set)
    watch: asyncio.Task[None] | None = None
    lock_fd: int | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "batch_id": self.batch_id, "input_file_id": self.input_file_id,
                "status": self.status, "submitted_at": self.submitted_at, "output_file_id": self.output_file_id,
                "error_file_id": self.error_file_id, "requests": self.requests, "consumed": sorted(self.consumed),
                "failed": sorted(self.failed)}

    @classmethod
    def load(cls, data: dict[str, Any]) -> Entry:
        return cls(id=str(data["id"]), input_file_id=str(data["input_file_id"]),
                   requests={str(k): str(v) for k, v in data["requests"].items()},
                   submitted_at=float(data["submitted_at"]), batch_id=data.get("batch_id"),
                   status=str(data.get("status") or "submitted"), output_file_id=data.get("output_file_id"),
                   error_file_id=data.get("error_file_id"), consumed=set(data.get("consumed") or ()),
                   failed=set(data.get("failed") or ()))


@dataclass(slots=True)
class Pending:
    custom_id: str
    line: bytes
    hash: str


class StateDir:
    """Entry files, written atomically, each locked by the process that holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, ttl_s: float) -> list[Entry]:
        if not self.path.is_dir():
            return []
        entries = []
        now = time.time()
        for file in sorted(self.path.glob("*.json")):
            try:
                entry = Entry.load(orjson.loads(file.read_bytes()))
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("batch state %s is unreadable; ignored", file)
                continue
            if entry.id != file.stem:
                continue
            if not self.lock(entry):
                continue  # another live run holds it
            if now - entry.submitted_at > ttl_s:
                self.drop(entry)
                continue
            entries.append(entry)
        return entries

    def lock(self, entry: Entry) -> bool:
        if fcntl is None:
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / f"{entry.id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        entry.lock_fd = fd
        return True

    def save(self, entry: Entry) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{entry.id}.json"
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(entry.public()))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def drop(self, entry: Entry) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{entry.id}.json").unlink()
        self.release(entry, remove=True)

    def release(self, entry: Entry, *, remove: bool = False) -> None:
        if entry.lock_fd is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                (self.path / f"{entry.id}.lock").unlink()
        os.close(entry.lock_fd)  # closing the descriptor releases the flock
        entry.lock_fd = None


def _sdk_error(exc: BaseException) -> RequestError:
    """An SDK exception from an API call (upload, submit, poll, download) as a RequestError."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return RequestError("timeout", str(exc), retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return RequestError("connection", str(exc) or type(exc).__name__, retryable=True)
    if isinstance(exc, openai.APIStatusError):
        return http_error(exc.status_code, str(exc.message), exc.response.headers.get("retry-after"))
    return RequestError("batch_api", f"{type(exc).__name__}: {exc}", retryable=True)


def _line_result(line: dict[str, Any], model: str) -> ChatResult | RequestError:
    """One line of an output or error file: the completion, or why this one request failed."""
    response = line.get("response") or None
    error = line.get("error") or None
    if response is not None:
        if "status_code" not in response and "choices" in response:  # the completion itself, unwrapped
            response = {"status_code": 200, "body": response}
        status = int(response.get("status_code") or 0)
        raw = orjson.dumps(response.get("body"))
        if status == 200:
            try:
                return parse_completion(raw, model)
            except RequestError as exc:
                return exc
        return http_error(status, raw.decode("utf-8", "replace"), None)
    if isinstance(error, dict):
        code = _SLUG.sub("_", str(error.get("code") or "error").lower()).strip("_") or "error"
        reason = code if code.startswith("batch_") else f"batch_{code}"
        # Requests a batch never ran (it expired or was cancelled) are worth another batch.
        return RequestError(reason, str(error.get("message") or ""), retryable=reason in (
            "batch_expired", "batch_cancelled"))
    return RequestError("bad_response", f"batch line without response or error: {str(line)[:200]}",
                        retryable=True)


class OpenAIBatchClient:
    def __init__(self, base_url: str, model: str, *, api_key: str | None, options: dict[str, Any],
                 state_dir: Path, request_timeout: float) -> None:
        self.base_url = base_url
        self.model = model
        opts = {**OPTIONS, **options}
        self._window_s = float(opts["batch_window_s"])
        self._max_requests = int(opts["max_batch_requests"])
        self._max_bytes = int(opts["max_batch_bytes"])
        self._poll_s = float(opts["poll_interval_s"])
        self._batch_timeout = float(opts["batch_timeout_s"])
        self._completion_window = str(opts["completion_window"])
        self._max_retries = int(opts["max_retries"])
        self._ttl = float(opts["state_ttl_s"])
        self._extra = dict(opts["extra_body"] or {})
        self._reuse = bool(opts["reuse_taken_results"])
        # vLLM and other servers without auth take any key; the operator's OPENAI_API_KEY is never
        # read, so a job's base_url cannot receive a key the job did not bring.
        self._api_key = api_key or "EMPTY"
        self._request_timeout = request_timeout
        self._state = StateDir(state_dir)
        self._sdk: Any = None
        self._entries: dict[str, Entry] | None = None
        # Unconsumed requests of known batches that no caller holds yet: body hash -> [(entry, custom_id)].
        self._free: dict[str, list[tuple[Entry, str]]] = {}
        self._futures: dict[str, asyncio.Future[ChatResult]] = {}
        self._window: dict[str, Pending] = {}  # custom_id -> request, in arrival order
        self._window_bytes = 0
        self._window_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._saves: set[str] = set()
        self._save_task: asyncio.Task[None] | None = None
        self._owner: dict[str, Entry] = {}  # custom_id -> its entry
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self._closed = False
        self.submitted = 0  # batches this client submitted (not attached)

    # -- the contract --------------------------------------------------------------------------
    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult:
        """`timeout` (the role's) is not the wait: a batch takes hours; `batch_timeout_s` is."""
        body = {"model": self.model, "messages": messages, **self._extra, **sampling}
        digest = body_hash(body)
        fut: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        entry, custom_id = self._attach(digest)
        if entry is not None:
            self._futures[custom_id] = fut
            entry.waiting.add(custom_id)
            self._deliver_known(entry, custom_id)
            self._ensure_watch(entry)
        else:
            custom_id = f"{self._prefix}-{next(self._ids)}"
            self._futures[custom_id] = fut
            self._enqueue(Pending(custom_id, orjson.dumps(
                {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n", digest))
        try:
            async with asyncio.timeout(self._batch_timeout):
                return await fut
        except TimeoutError:
            raise RequestError("batch_timeout", f"no batch result in {self._batch_timeout:g}s") from None
        finally:
            self._leave(custom_id, digest)

    async def aclose(self) -> None:
        """Stop polling and keep every entry on disk: a resumed run picks the batches up."""
        self._closed = True
        tasks = [t for t in (self._window_task, self._save_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for entry in (self._entries or {}).values():
            if entry.watch is not None:
                entry.watch.cancel()
                with contextlib.suppress(BaseException):
                    await entry.watch
        self._flush_saves()
        for entry in (self._entries or {}).values():
            self._state.release(entry)
        if self._sdk is not None:
            await self._sdk.close()

    # -- attaching to batches already out ----------------------------------------------------------
    def _known(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            for entry in self._state.load(self._ttl):
                self._register(entry)
            if self._entries:
                log.info("openai-batch: %d batch(es) from an earlier run in %s", len(self._entries), self._state.path)
        return self._entries

    def _register(self, entry: Entry) -> None:
        """Make an entry known; its requests no caller holds become free to attach to."""
        assert self._entries is not None
        self._entries[entry.id] = entry
        for custom_id, digest in entry.requests.items():
            self._owner[custom_id] = entry
            if self._available(entry, custom_id) and custom_id not in self._futures:
                self._free.setdefault(digest, []).append((entry, custom_id))

    def _available(self, entry: Entry, custom_id: str) -> bool:
        """May a caller of this process take this request's result?"""
        return (custom_id not in entry.failed and custom_id not in entry.taken_here
                and (self._reuse or custom_id not in entry.consumed))

    def _attach(self, digest: str) -> tuple[Entry | None, str]:
        self._known()
        free = self._free.get(digest)
        if not free:
            return None, ""
        # a result nobody took yet before one an earlier run took (and perhaps wrote)
        pick = next((i for i, (e, c) in enumerate(free) if c not in e.consumed), 0)
        entry, custom_id = free.pop(pick)
        if not free:
            del self._free[digest]
        return entry, custom_id

    def _leave(self, custom_id: str, digest: str) -> None:
        """A caller is done (answered, failed, timed out or cancelled). A request whose result it
        never took stays free for the next caller with the same body (a retry, a resumed run)."""
        fut = self._futures.pop(custom_id, None)
        if fut is not None and not fut.done():
            fut.cancel()
        pending = self._window.pop(custom_id, None)
        if pending is not None:  # not submitted yet: nobody pays for it
            self._window_bytes -= len(pending.line)
            return
        entry = self._owner.get(custom_id)
        if entry is None:
            return
        entry.waiting.discard(custom_id)
        if self._available(entry, custom_id):
            self._free.setdefault(digest, []).append((entry, custom_id))

    # -- gathering and submitting --------------------------------------------------------------
    def _enqueue(self, pending: Pending) -> None:
        if self._window and (len(self._window) >= self._max_requests
                             or self._window_bytes + len(pending.line) > self._max_bytes):
            self._submit_window()
        self._window[pending.custom_id] = pending
        self._window_bytes += len(pending.line)
        if len(self._window) >= self._max_requests:
            self._submit_window()
        elif self._window_task is None:
            self._window_task = asyncio.create_task(self._close_window_later())

    async def _close_window_later(self) -> None:
        await asyncio.sleep(self._window_s)
        self._window_task = None
        self._submit_window()

    def _submit_window(self) -> None:
        if self._window_task is not None:
            self._window_task.cancel()
            self._window_task = None
        batch, self._window, self._window_bytes = list(self._window.values()), {}, 0
        if batch:
            ids = [p.custom_id for p in batch]
            self._spawn(self._guarded(self._submit(batch), lambda: ids))

    async def _guarded(self, coro: Any, callers: Any) -> None:
        """Run a submit or watch task; if it breaks (a state folder that cannot be written, a bug),
        its callers fail at once with the reason instead of waiting for batch_timeout_s."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("openai-batch: %s", type(exc).__name__)
            self._fail(callers(), RequestError("batch_internal", f"{type(exc).__name__}: {exc}"))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _client(self) -> Any:
        if self._sdk is None:
            import openai

            # The SDK's HTTP client logs every request at INFO: one line per poll of a day-long batch.
            # Quieted unless someone chose a level for it; this module logs what a batch does.
            quiet = logging.getLogger("httpx2")  # the SDK's own HTTP client, used by nothing else here
            if quiet.level == logging.NOTSET:
                quiet.setLevel(logging.WARNING)

            self._sdk = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key,
                                           max_retries=self._max_retries, timeout=self._request_timeout)
        return self._sdk

    async def _submit(self, batch: list[Pending]) -> None:
        """Upload, record, submit, record again: a crash between the two leaves an entry without a
        batch id, which the next run resolves by looking the input file up among the batches."""
        sdk = self._client()
        entry = Entry(id=f"b{uuid.uuid4().hex[:16]}", input_file_id="", submitted_at=time.time(),
                      requests={p.custom_id: p.hash for p in batch})
        try:
            uploaded = await sdk.files.create(file=("synthgen-batch.jsonl", b"".join(p.line for p in batch),
                                                    "application/jsonl"), purpose="batch")
        except Exception as exc:
            self._fail(list(entry.requests), _sdk_error(exc))
            return
        entry.input_file_id = uploaded.id
        self._state.lock(entry)  # a fresh id: nobody else holds it
        self._known()
        self._register(entry)
        entry.waiting.update(c for c in entry.requests if c in self._futures)
        self._state.save(entry)
        try:
            created = await sdk.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                                               completion_window=self._completion_window,
                                               metadata={"synthgen_entry": entry.id})
        except Exception as exc:
            error = _sdk_error(exc)
            if not error.retryable:  # refused (bad model, bad file): no batch exists
                self._forget(entry)
                self._fail(list(entry.requests), error)
                return
            # Perhaps created after all: the callers' retries attach to this entry, whose watch
            # looks the input file up among the batches before anything is submitted again.
            self._release_callers(entry, error)
            return
        entry.batch_id = created.id
        self._state.save(entry)
        self.submitted += 1
        log.info("openai-batch: submitted %s (%d requests)", created.id, len(batch))
        self._ensure_watch(entry)

    # -- watching and routing ------------------------------------------------------------------
    def _ensure_watch(self, entry: Entry) -> None:
        if entry.results is None and entry.waiting and (entry.watch is None or entry.watch.done()) \
                and not self._closed and entry.input_file_id:
            entry.watch = asyncio.create_task(self._guarded(self._watch(entry), lambda: list(entry.waiting)))

    async def _watch(self, entry: Entry) -> None:
        """Poll one batch until it ends while anyone waits on it; then route its lines."""
        sdk = self._client()
        if entry.batch_id is None and not await self._recover(entry):
            return
        errors = 0
        while entry.waiting:
            try:
                batch = await sdk.batches.retrieve(entry.batch_id)
                errors = 0
            except Exception as exc:
                error = _sdk_error(exc)
                if error.reason == "http_404":
                    log.warning("openai-batch: %s is unknown to the server; its requests go out again",
                                entry.batch_id)
                    self._forget(entry)
                    self._fail(list(entry.waiting), RequestError("batch_lost", error.args[0], retryable=True))
                    return
                errors += 1
                if errors >= MAX_POLL_ERRORS:
                    self._release_callers(entry, error)
                    return
                await asyncio.sleep(self._poll_s)
                continue
            if batch.status in TERMINAL:
                await self._finish(entry, batch)
                return
            await asyncio.sleep(self._poll_s)

    async def _recover(self, entry: Entry) -> bool:
        """An entry whose submission never got its answer: find the batch made from its file."""
        try:
            seen = 0
            async for batch in self._client().batches.list(limit=100):
                seen += 1
                if seen > 2000:  # submitted long ago, or not at all: give up looking
                    break
                if batch.input_file_id == entry.input_file_id:
                    entry.batch_id = batch.id
                    self._state.save(entry)
                    return True
        except Exception as exc:
            log.info("openai-batch: cannot list batches (%s); resubmitting %s", type(exc).__name__, entry.id)
        self._forget(entry)
        self._fail(list(entry.waiting), RequestError("batch_not_submitted", "the batch was never created; "
                                                     "submitting again", retryable=True))
        return False

    async def _finish(self, entry: Entry, batch: Any) -> None:
        lines: dict[str, ChatResult | RequestError] = {}
        try:
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    content = await self._client().files.content(file_id)
                    for raw in content.content.splitlines():
                        if raw.strip():
                            line = orjson.loads(raw)
                            if line.get("custom_id") in entry.requests:
                                lines[line["custom_id"]] = _line_result(line, self.model)
        except Exception as exc:
            error = _sdk_error(exc)
            if error.reason == "http_404":  # the output is gone (deleted, expired): ask again
                self._forget(entry)
                self._fail(list(entry.waiting), RequestError("batch_lost", error.args[0], retryable=True))
                return
            self._release_callers(entry, error)  # the next caller's watch downloads it again
            return
        whole = RequestError(f"batch_{batch.status}", f"batch {entry.batch_id} ended {batch.status} "
                             f"({_batch_errors(batch)})", retryable=True)
        missing = RequestError("batch_missing_result", f"batch {entry.batch_id} has no line for the request",
                               retryable=True)
        entry.results = {c: r for c, r in lines.items() if isinstance(r, ChatResult) and self._available(entry, c)}
        for custom_id in entry.requests:
            if not isinstance(lines.get(custom_id), ChatResult):
                entry.failed.add(custom_id)  # an error is not kept: a later caller submits again
                entry.consumed.add(custom_id)
        entry.status, entry.output_file_id, entry.error_file_id = "completed", batch.output_file_id, batch.error_file_id
        answered = sum(isinstance(r, ChatResult) for r in lines.values())
        log.info("openai-batch: %s %s (%d results, %d errors)", entry.batch_id, batch.status, answered,
                 len(entry.requests) - answered)
        for custom_id in list(entry.waiting):
            result = lines.get(custom_id) or (whole if batch.status != "completed" else missing)
            if isinstance(result, ChatResult):
                self._deliver_known(entry, custom_id)
            else:
                self._fail([custom_id], result)
        self._prune_free(entry)
        self._settle(entry)

    def _deliver_known(self, entry: Entry, custom_id: str) -> None:
        """Hand a caller its result if the batch already ended (attach after completion)."""
        if entry.results is None or custom_id not in entry.results:
            return
        fut = self._futures.get(custom_id)
        if fut is not None and not fut.done():
            fut.set_result(entry.results.pop(custom_id))
            entry.consumed.add(custom_id)
            entry.taken_here.add(custom_id)
            entry.waiting.discard(custom_id)
            self._settle(entry)

    def _prune_free(self, entry: Entry) -> None:
        for digest in {entry.requests[c] for c in entry.consumed}:
            kept = [(e, c) for e, c in self._free.get(digest, []) if e is not entry or self._available(e, c)]
            if kept:
                self._free[digest] = kept
            else:
                self._free.pop(digest, None)

    def _settle(self, entry: Entry) -> None:
        """Write what changed (soon, coalesced); forget the entry once every result was taken."""
        if len(entry.failed) >= len(entry.requests) or (not self._reuse and len(entry.consumed) >= len(entry.requests)):
            self._forget(entry)  # with reuse_taken_results an entry stays until state_ttl_s
            return
        self._saves.add(entry.id)
        if self._save_task is None and not self._closed:
            self._save_task = asyncio.create_task(self._save_soon())

    async def _save_soon(self) -> None:
        await asyncio.sleep(0.5)
        self._save_task = None
        self._flush_saves()

    def _flush_saves(self) -> None:
        entries = self._entries or {}
        for entry_id in sorted(self._saves):
            if entry_id in entries:
                self._state.save(entries[entry_id])
        self._saves.clear()

    def _forget(self, entry: Entry) -> None:
        if self._entries is not None:
            self._entries.pop(entry.id, None)
        for custom_id in entry.requests:
            self._owner.pop(custom_id, None)
        for digest in set(entry.requests.values()):
            kept = [(e, c) for e, c in self._free.get(digest, []) if e is not entry]
            if kept:
                self._free[digest] = kept
            else:
                self._free.pop(digest, None)
        self._saves.discard(entry.id)
        self._state.drop(entry)

    def _fail(self, custom_ids: list[str], error: RequestError) -> None:
        for custom_id in custom_ids:
            fut = self._futures.get(custom_id)
            if fut is not None and not fut.done():
                fut.set_exception(error)

    def _release_callers(self, entry: Entry, error: RequestError) -> None:
        """Tell the callers of an entry something went wrong, keeping the entry for their retries."""
        self._fail(list(entry.waiting), RequestError(error.reason, error.args[0], retryable=True,
                                                     retry_after=error.retry_after))


def _batch_errors(batch: Any) -> str:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return "; ".join(f"{e.code}: {e.message}" for e in errors[:3]) or "no details"


def _options(cfg: RoleConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.options.items() if v is not None}


def make(cfg: RoleConfig) -> ChatClient:
    from synthgen.settings import get_settings

    assert cfg.base_url and cfg.model
    opts = _options(cfg)
    state = Path(opts["state_dir"]) if opts.get("state_dir") else default_state_dir(
        get_settings().data_root, cfg.base_url, cfg.model)
    key = cfg.api_key.get_secret_value() if cfg.api_key else None
    return OpenAIBatchClient(cfg.base_url, cfg.model, api_key=key, options=opts, state_dir=state,
                             request_timeout=float(cfg.timeout or 600.0))


def check(role: str, cfg: RoleConfig) -> None:
    if not cfg.base_url:
        raise ValueError(f"role {role!r}: the openai-batch engine needs base_url (or --base-url)")
    if not cfg.model:
        raise ValueError(f"role {role!r}: no model name (set --model or roles.{role}.model)")
    if len(cfg.endpoints()) > 1:
        raise ValueError(f"role {role!r}: the openai-batch engine submits to one server; set base_url, not base_urls")
    opts = _options(cfg)
    unknown = set(opts) - set(OPTIONS)
    if unknown:
        raise ValueError(f"role {role!r}: unknown openai-batch options {sorted(unknown)} (known: {sorted(OPTIONS)})")
    for name in POSITIVE:
        value = opts.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ValueError(f"role {role!r}: option {name} must be a positive number")
    if int(opts.get("max_batch_requests", 1)) > 50_000:
        raise ValueError(f"role {role!r}: max_batch_requests is at most 50000 (the Batch API's limit)")
    retries = opts.get("max_retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"role {role!r}: option max_retries must be a whole number >= 0")
    if "extra_body" in opts and not isinstance(opts["extra_body"], dict):
        raise ValueError(f"role {role!r}: option extra_body must be a mapping")
    if "reuse_taken_results" in opts and not isinstance(opts["reuse_taken_results"], bool):
        raise ValueError(f"role {role!r}: option reuse_taken_results must be true or false")
    if "completion_window" in opts and not isinstance(opts["completion_window"], str):
        raise ValueError(f"role {role!r}: option completion_window must be a string such as '24h'")


backend = Backend(name="openai-batch", make=make, check=check, own_timeout=True, default_concurrency=50_000,
                  description="the OpenAI Batch API (files + batches, about half price, results within 24 h); "
                              "resumes pending batches")
