"""A loopback stand-in for the Hugging Face Hub's HTTP API, for tests, benchmarks and offline demos.

It answers the calls `huggingface_hub` and `datasets` make to create a dataset repo, push
files to it through the preupload / LFS batch / basic-transfer PUT / commit protocol, and
read it back (repo info, tree, paths-info, resolve with ranges), so a push and a
`load_dataset(repo, config)` run over real HTTP against 127.0.0.1 rather than against mocks.
Uploaded LFS objects stream to disk (a multi-GB push keeps the server's memory flat), every
request is counted, and faults can be injected per route (a 5xx for the next k calls, or
for every call after the first j) to exercise retries and resumed pushes. Private repos
answer 404 to requests without the right token, as the Hub does. It only binds to 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from synthgen.loopback_server import ThreadedSite

# Metadata values the Hub accepts for the keys the stand-in validator checks (a subset of the
# Hub's lists: the licences and tasks synthgen can emit, and common neighbours).
LICENSES = {"apache-2.0", "mit", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-sa-3.0", "cc-by-nc-4.0",
            "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc-by-nd-4.0", "cc-by-3.0", "cc-by-nc-3.0", "gpl-3.0",
            "odc-by", "odbl", "openrail", "llama3", "gemma", "other", "unknown"}
TASKS = {"text-generation", "question-answering", "visual-question-answering", "image-to-text",
         "image-text-to-text", "text-classification", "translation", "summarization", "image-classification",
         "document-question-answering", "text2text-generation", "feature-extraction"}
SIZES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B",
         "10B<n<100B", "100B<n<1T", "n>1T"}
LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".webp", ".bin", ".safetensors", ".zip")


@dataclass
class HubFile:
    size: int
    sha256: str
    git_oid: str
    lfs: bool
    blob: Path


@dataclass
class HubRepo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, HubFile] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


@dataclass
class Fault:
    """Answer `status` to requests whose "METHOD path" matches `pattern`: after letting
    `skip` of them through, for the next `times` (None: for ever)."""

    pattern: str
    status: int = 500
    times: int | None = 1
    skip: int = 0
    hits: int = 0

    def fires(self) -> bool:
        self.hits += 1
        if self.hits <= self.skip:
            return False
        return self.times is None or self.hits - self.skip <= self.times


class LoopbackHub(ThreadedSite):
    def __init__(self, *, token: str = "hf_loopback_token", root: Path | None = None, user: str = "tester") -> None:
        super().__init__()
        self.token = token
        self.user = user
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="loopback-hub-")
        self.root = Path(root) if root else Path(self._tmp.name)  # type: ignore[union-attr]
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.faults: list[Fault] = []
        self.requests: Counter[str] = Counter()
        self.lfs_puts: Counter[str] = Counter()
        self.lfs_bytes = 0
        self.injected: list[str] = []
        self.auth_headers_seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def repo(self, repo_id: str, repo_type: str = "dataset") -> HubRepo:
        return self.repos[(repo_type, repo_id)]

    def inject(self, pattern: str, status: int = 500, times: int | None = 1, skip: int = 0) -> Fault:
        fault = Fault(pattern, status, times, skip)
        self.faults.append(fault)
        return fault

    # -- app -------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3, middlewares=[self._middleware])
        r = app.router
        r.add_post("/api/repos/create", self._create)
        r.add_get("/api/whoami-v2", self._whoami)
        r.add_post("/api/validate-yaml", self._validate_yaml)
        r.add_get(r"/api/{kind:models|datasets|spaces}/{ns}/{name}", self._info)
        r.add_get(r"/api/{kind:models|datasets|spaces}/{ns}/{name}/revision/{rev}", self._info)
        r.add_post(r"/api/{kind:models|datasets|spaces}/{ns}/{name}/preupload/{rev}", self._preupload)
        r.add_post(r"/api/{kind:models|datasets|spaces}/{ns}/{name}/commit/{rev}", self._commit)
        r.add_get(r"/api/{kind:models|datasets|spaces}/{ns}/{name}/tree/{rev}", self._tree)
        r.add_get(r"/api/{kind:models|datasets|spaces}/{ns}/{name}/tree/{rev}/{path:.*}", self._tree)
        r.add_post(r"/api/{kind:models|datasets|spaces}/{ns}/{name}/paths-info/{rev}", self._paths_info)
        r.add_post(r"/{prefix:datasets/|spaces/|}{ns}/{name:[^/]+}.git/info/lfs/objects/batch", self._lfs_batch)
        r.add_put("/lfs-upload/{oid}", self._lfs_put)
        r.add_post("/lfs-verify/{oid}", self._lfs_verify)
        r.add_route("GET", r"/{prefix:datasets/|spaces/|}{ns}/{name}/resolve/{rev}/{path:.*}", self._resolve)
        r.add_route("HEAD", r"/{prefix:datasets/|spaces/|}{ns}/{name}/resolve/{rev}/{path:.*}", self._resolve)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        with self._lock:
            self.requests[key] += 1
            auth = request.headers.get("Authorization", "")
            self.auth_headers_seen.append((key, auth))
            for fault in self.faults:
                if re.search(fault.pattern, key) and fault.fires():
                    self.injected.append(key)
                    if request.can_read_body:
                        await request.read()
                    return web.json_response({"error": "injected fault"}, status=fault.status)
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    def _find(self, request: web.Request, *, write: bool = False) -> HubRepo:
        prefix = request.match_info.get("prefix")
        kind = request.match_info.get("kind") or (prefix.rstrip("/") if prefix else "models")
        repo_type = {"models": "model", "datasets": "dataset", "spaces": "space"}.get(kind, "model")
        repo_id = f"{request.match_info['ns']}/{request.match_info['name']}"
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or ((repo.private or write) and not self._authorized(request)):
            raise web.HTTPNotFound(text=orjson.dumps({"error": "Repository not found"}).decode(),
                                   content_type="application/json", headers={"X-Error-Code": "RepoNotFound"})
        return repo

    # -- repos -----------------------------------------------------------------------------
    async def _whoami(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "Invalid credentials"}, status=401)
        return web.json_response({"type": "user", "name": self.user, "orgs": [], "auth": {"type": "access_token"}})

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "Invalid credentials"}, status=401)
        body = await request.json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.endpoint}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return web.json_response({"error": "You already created this repo", "url": url}, status=409)
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        self.repos[(repo_type, repo_id)] = HubRepo(repo_type, repo_id, private)
        return web.json_response({"url": url, "name": repo_id, "id": repo_id})

    async def _info(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        siblings = [{"rfilename": p, "size": f.size, **({"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {})}
                    for p, f in sorted(repo.files.items())]
        info: dict[str, Any] = {"_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                                "sha": repo.sha, "private": repo.private, "gated": False, "disabled": False,
                                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"}
        readme = repo.files.get("README.md")
        if readme is not None:
            from huggingface_hub.repocard import metadata_load

            info["cardData"] = metadata_load(readme.blob) or {}
        return web.json_response(info)

    async def _validate_yaml(self, request: web.Request) -> web.Response:
        """What the Hub's `/api/validate-yaml` does for the keys above: parse the front matter
        and reject values outside the Hub's vocabularies (400 with `errors`)."""
        import yaml
        from huggingface_hub.repocard import REGEX_YAML_BLOCK

        body = await request.json()
        match = REGEX_YAML_BLOCK.search(body.get("content", ""))
        errors: list[str] = []
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return web.json_response({"errors": [{"message": f"invalid YAML: {exc}"}]}, status=400)
        if not isinstance(meta, dict):
            meta = {}

        def values(key: str) -> list[Any]:
            v = meta.get(key)
            return [] if v is None else v if isinstance(v, list) else [v]

        errors += [f'"license" must be one of the Hub licences, got {v!r}' for v in values("license") if v not in LICENSES]
        errors += [f'"task_categories" has unknown {v!r}' for v in values("task_categories") if v not in TASKS]
        errors += [f'"size_categories" has unknown {v!r}' for v in values("size_categories") if v not in SIZES]
        errors += [f'"language" has bad code {v!r}' for v in values("language")
                   if not isinstance(v, str) or not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)?", v)]
        for cfg in values("configs"):
            if not isinstance(cfg, dict) or not cfg.get("config_name") or "data_files" not in cfg:
                errors.append(f'"configs" entry {cfg!r} needs config_name and data_files')
        if errors:
            return web.json_response({"errors": [{"message": e} for e in errors]}, status=400)
        return web.json_response({"errors": [], "warnings": []})

    # -- upload protocol -------------------------------------------------------------------
    async def _preupload(self, request: web.Request) -> web.Response:
        repo = self._find(request, write=True)
        body = await request.json()
        files = []
        for f in body.get("files", []):
            path = f["path"]
            sample = base64.b64decode(f.get("sample", ""))
            lfs = path.endswith(LFS_SUFFIXES) or f.get("size", 0) > 10 * 1024 * 1024 or b"\x00" in sample
            remote = repo.files.get(path)
            oid = (remote.sha256 if remote.lfs else remote.git_oid) if remote else None
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return web.json_response({"files": files, "commitOid": repo.sha})

    async def _lfs_batch(self, request: web.Request) -> web.Response:
        self._find(request, write=True)
        body = await request.json()
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not (self.root / "objects" / oid).exists():
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{oid}"},
                                    "verify": {"href": f"{self.endpoint}/lfs-verify/{oid}"}}
            objects.append(entry)
        return web.json_response({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    async def _lfs_put(self, request: web.Request) -> web.Response:
        oid = request.match_info["oid"]
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            return web.json_response({"error": "bad oid"}, status=400)
        tmp = self.root / "objects" / f"{oid}.part-{time.monotonic_ns()}"
        digest = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as fh:
            async for chunk in request.content.iter_chunked(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
                size += len(chunk)
        if digest.hexdigest() != oid:
            tmp.unlink()
            return web.json_response({"error": "sha256 mismatch"}, status=400)
        tmp.replace(self.root / "objects" / oid)
        with self._lock:
            self.lfs_puts[oid] += 1
            self.lfs_bytes += size
        return web.Response(status=200)

    async def _lfs_verify(self, request: web.Request) -> web.Response:
        body = await request.json()
        path = self.root / "objects" / request.match_info["oid"]
        if not path.exists() or path.stat().st_size != int(body.get("size", -1)):
            return web.json_response({"error": "object missing"}, status=404)
        return web.json_response({"ok": True})

    async def _commit(self, request: web.Request) -> web.Response:
        repo = self._find(request, write=True)
        lines = [orjson.loads(x) for x in (await request.read()).splitlines() if x.strip()]
        header: dict[str, Any] = {}
        changed: list[str] = []
        staged: dict[str, HubFile | None] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
                parent = value.get("parentCommit")
                if parent and parent != repo.sha:
                    return web.json_response({"error": "parent commit is not the head"}, status=412)
            elif key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                    value["content"].encode()
                staged[value["path"]] = self._store_regular(data)
            elif key == "lfsFile":
                blob = self.root / "objects" / value["oid"]
                if not blob.exists():
                    return web.json_response({"error": f"LFS object {value['oid']} missing"}, status=422)
                sha1 = hashlib.sha1(f"lfs {value['oid']}".encode()).hexdigest()
                staged[value["path"]] = HubFile(int(value["size"]), value["oid"], sha1, True, blob)
            elif key == "deletedFile":
                staged[value["path"]] = None
            elif key == "deletedFolder":
                for path in [p for p in repo.files if p.startswith(value["path"].rstrip("/") + "/")]:
                    staged[path] = None
        for path, entry in staged.items():
            changed.append(path)
            if entry is None:
                repo.files.pop(path, None)
            else:
                repo.files[path] = entry
        oid = hashlib.sha1(orjson.dumps([repo.sha, header.get("summary"), sorted(changed),
                                         time.monotonic_ns()])).hexdigest()
        repo.commits.append({"oid": oid, "summary": header.get("summary", ""), "paths": sorted(changed)})
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return web.json_response({"success": True, "commitOid": oid,
                                  "commitUrl": f"{self.endpoint}/{prefix}{repo.repo_id}/commit/{oid}"})

    def _store_regular(self, data: bytes) -> HubFile:
        sha256 = hashlib.sha256(data).hexdigest()
        blob = self.root / "objects" / sha256
        if not blob.exists():
            blob.write_bytes(data)
        git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return HubFile(len(data), sha256, git_oid, False, blob)

    # -- read protocol ---------------------------------------------------------------------
    def _entry(self, path: str, f: HubFile) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "path": path, "size": f.size, "oid": f.git_oid}
        if f.lfs:
            out["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return out

    def _listing(self, repo: HubRepo, base: str, recursive: bool) -> list[dict[str, Any]]:
        base = base.strip("/")
        prefix = f"{base}/" if base else ""
        items: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, f in sorted(repo.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folder = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and folder not in folders:
                    folders.add(folder)
                    items.append({"type": "directory", "path": folder,
                                  "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0})
            if recursive or len(parts) == 1:
                items.append(self._entry(path, f))
        return items

    async def _tree(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        base = request.match_info.get("path", "")
        recursive = request.query.get("recursive", "false").lower() in ("1", "true")
        items = self._listing(repo, base, recursive)
        if base.strip("/") and not items and base.strip("/") not in repo.files:
            return web.json_response({"error": "path not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound"})
        return web.json_response(items)

    async def _paths_info(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        if request.content_type == "application/json":
            body = await request.json()
            paths = body.get("paths", [])
        else:
            form = await request.post()
            paths = form.getall("paths", [])
        out = []
        for raw in paths:
            path = str(raw).strip("/")
            if path in repo.files:
                out.append(self._entry(path, repo.files[path]))
            elif any(p.startswith(path + "/") for p in repo.files):
                out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(),
                            "size": 0})
        return web.json_response(out)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._find(request)
        path = request.match_info["path"]
        f = repo.files.get(path)
        if f is None:
            return web.json_response({"error": "Entry not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.sha256 if f.lfs else f.git_oid}"',
                   "Accept-Ranges": "bytes"}
        if f.lfs:
            headers["X-Linked-Size"] = str(f.size)
            headers["X-Linked-ETag"] = f'"{f.sha256}"'
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(f.size)})
        return web.FileResponse(f.blob, headers=headers)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._tmp is not None:
            self._tmp.cleanup()


def main() -> None:
    """`python -m synthgen.publish.loopback_hub --port 8010`: a stand-in Hub for offline demos
    (HF_ENDPOINT=http://127.0.0.1:8010, HF_TOKEN=<the --token value>)."""
    import argparse

    parser = argparse.ArgumentParser(description="loopback Hugging Face Hub stand-in (127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--root", type=Path, default=None, help="where uploaded objects are stored")
    parser.add_argument("--token", default="hf_loopback_token")
    args = parser.parse_args()
    hub = LoopbackHub(token=args.token, root=args.root)
    hub.port = args.port
    web.run_app(hub.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
