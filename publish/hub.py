"""Push a finished run to the Hugging Face Hub (or a private mirror at `HF_ENDPOINT`).

The repo gets one config per generator (`{config}/{split}-0000i-of-0000n.parquet`, images
embedded), a card merged into whatever card it already has, and the run's manifest. The
push is several commits, not one: shards go up a few at a time, each commit retried with
exponential back-off on transient errors (timeouts, 429, 5xx, dropped connections), and the
card comes last so a repo never advertises a config whose data is not there yet. Shards
are byte-identical for the same run, so a push run again after an interruption asks the
repo which files it already holds (path and LFS sha256) and sends only the rest; an LFS
object the server already has is not re-sent either (the LFS batch answers without an
upload action). Files stream from disk, so memory stays flat for any dataset size.

On huggingface.co huggingface_hub uploads through Xet; other endpoints (mirrors, the
loopback Hub of the tests) get the plain LFS protocol, which every Hub-compatible server
speaks. The token comes from the caller, `HF_TOKEN` or the huggingface_hub login; it is
passed to huggingface_hub only and never logged, stored or returned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from synthgen.publish import card as cards
from synthgen.publish import shards as shard_io
from synthgen.publish.prepare import prepare

log = logging.getLogger("synthgen.publish")
T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
STAGING = ".publish"


@dataclass(frozen=True)
class Backoff:
    """Retries of one Hub call: `attempts` in all, waits doubling from `first` up to `cap`
    seconds, with jitter so parallel pushes do not retry in lockstep."""

    attempts: int = 6
    first: float = 1.0
    cap: float = 30.0


@dataclass
class PushResult:
    repo_id: str
    config: str
    split: str
    url: str
    endpoint: str
    rows: int
    shards: int
    files_sent: int
    files_skipped: int
    commits: int
    private: bool | None
    retries: int = 0
    card: str = field(default="", repr=False)

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "card"}


def resolve_endpoint(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve_token(token: str | None = None) -> str | None:
    """An explicit token, else `HF_TOKEN`, else the huggingface_hub login (never logged)."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def transient(exc: BaseException) -> bool:
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        return status in TRANSIENT_STATUS
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


class Retrier:
    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.retries = 0

    def __call__(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for attempt in range(1, self.backoff.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == self.backoff.attempts or not transient(exc):
                    raise
                wait = min(self.backoff.cap, self.backoff.first * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                status = getattr(getattr(exc, "response", None), "status_code", None)
                log.warning("%s: %s%s; retry %d/%d in %.1fs", what, type(exc).__name__,
                            f" (HTTP {status})" if status else "", attempt, self.backoff.attempts - 1, wait)
                self.retries += 1
                time.sleep(wait)
        raise AssertionError("unreachable")


@contextlib.contextmanager
def transfer_protocol(endpoint: str) -> Iterator[None]:
    """Xet on huggingface.co (its default), LFS basic transfer on any other endpoint."""
    use_xet = endpoint.split("://", 1)[-1].split("/")[0].endswith("huggingface.co")
    old = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = old or not use_xet
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = old


def _remote_files(api: HfApi, repo_id: str, folder: str, retry: Retrier) -> dict[str, str | None]:
    """path -> LFS sha256 (None for a regular file) of what the repo holds under `folder`."""
    def listing() -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        try:
            for item in api.list_repo_tree(repo_id, path_in_repo=folder, recursive=True, repo_type="dataset"):
                if hasattr(item, "size") and hasattr(item, "lfs"):
                    out[item.path] = item.lfs.sha256 if item.lfs else None
        except EntryNotFoundError:
            return {}
        return out

    return retry("list repo files", listing)


def _existing_card(api: HfApi, repo_id: str, retry: Retrier) -> str | None:
    def download() -> str | None:
        with tempfile.TemporaryDirectory(prefix="synthgen-card-") as tmp:
            try:
                path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", cache_dir=tmp)
            except EntryNotFoundError:
                return None
            return Path(path).read_text(encoding="utf-8")

    return retry("read the dataset card", download)


def _commit_groups(items: list[tuple[str, Path, int]], files: int, size: int) -> list[list[tuple[str, Path, int]]]:
    groups: list[list[tuple[str, Path, int]]] = []
    current: list[tuple[str, Path, int]] = []
    total = 0
    for item in items:
        if current and (len(current) >= files or total + item[2] > size):
            groups.append(current)
            current, total = [], 0
        current.append(item)
        total += item[2]
    if current:
        groups.append(current)
    return groups


def push(run_dir: str | Path, repo_id: str, *, config: str | None = None, split: str = "train",
         private: bool = True, token: str | None = None, endpoint: str | None = None,
         license: str | None = None, sources: list[cards.SourceInfo] | None = None,
         staging: str | Path | None = None, max_shard_bytes: int = shard_io.MAX_SHARD_BYTES,
         row_group: int | None = None,
         files_per_commit: int = 20, bytes_per_commit: int = 4 * 1024**3,
         backoff: Backoff = Backoff(), keep_staging: bool = False) -> PushResult:
    """Publish the finished run at `run_dir` as config `config` (default: the generator's
    name), split `split`, of dataset repo `repo_id`. Run it again after a failure to resume."""
    endpoint = resolve_endpoint(endpoint)
    token = resolve_token(token)
    folder = Path(staging) if staging else Path(run_dir) / STAGING
    retry = Retrier(backoff)
    prepared = prepare(run_dir, folder, repo_id=repo_id, config=config, split=split, license=license,
                       sources=sources, max_shard_bytes=max_shard_bytes, row_group=row_group)
    staged, inputs = prepared.staged, prepared.card_inputs
    assert inputs is not None
    api = HfApi(endpoint=endpoint, token=token, library_name="synthgen")
    sent = skipped = commits = 0
    with transfer_protocol(endpoint):
        retry("create repo", api.create_repo, repo_id, repo_type="dataset", private=private, exist_ok=True)
        remote = _remote_files(api, repo_id, staged.config, retry)
        todo: list[tuple[str, Path, int]] = []
        for shard in staged.shards:
            path_in_repo = staged.path_in_repo(shard)
            if remote.get(path_in_repo) == shard.sha256:
                skipped += 1
                continue
            todo.append((path_in_repo, staged.path(shard), shard.size))
        groups = _commit_groups(todo, files_per_commit, bytes_per_commit)
        for i, group in enumerate(groups, 1):
            ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(local)) for p, local, _ in group]
            retry(f"commit shards {i}/{len(groups)}", api.create_commit, repo_id, ops, repo_type="dataset",
                  commit_message=f"synthgen: {staged.config}/{staged.split} shards (part {i}/{len(groups)})")
            sent += len(group)
            commits += 1
            log.info("pushed %d/%d shard commits to %s", i, len(groups), repo_id)
        ours = {staged.path_in_repo(s) for s in staged.shards}
        stale = [p for p in remote if p.startswith(f"{staged.config}/{staged.split}-") and p.endswith(".parquet")
                 and p not in ours]
        existing = _existing_card(api, repo_id, retry)
        text = cards.build_card(existing, inputs)
        card_path = folder / staged.config / f"{split}_README.md"
        card_path.write_text(text, encoding="utf-8")
        final: list[Any] = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card_path))]
        final += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(local)) for p, local in prepared.extras.items()]
        final += [CommitOperationDelete(path_in_repo=p) for p in stale]
        retry("commit the dataset card", api.create_commit, repo_id, final, repo_type="dataset",
              commit_message=f"synthgen: dataset card for {staged.config}/{staged.split}")
        commits += 1
        try:
            is_private = retry("read repo info", api.repo_info, repo_id, repo_type="dataset").private
        except RepositoryNotFoundError:
            is_private = None
    if not keep_staging:
        shard_io.clear(folder)
    return PushResult(repo_id=repo_id, config=staged.config, split=split, url=f"{endpoint}/datasets/{repo_id}",
                      endpoint=endpoint, rows=staged.rows, shards=len(staged.shards), files_sent=sent,
                      files_skipped=skipped, commits=commits, private=is_private, retries=retry.retries, card=text)
