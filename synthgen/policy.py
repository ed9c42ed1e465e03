"""The operator policy for REST jobs: what a client on the network may make the server read,
call, download or run.

The CLI is the local user and keeps its freedom; `POST /v1/jobs` and `POST /v1/trainings`
check a spec here and answer 422 for anything outside the policy, and the worker process
activates the same policy so the readers (persona files, text and image sources, image
downloads) refuse at run time what slipped past, e.g. an image path inside a table.

Messages never say whether a path outside the allowed roots exists, and never show the
absolute data root: a client names paths relative to it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from synthgen.settings import Settings

# A Hub repository id: owner/name (datasets may add :config). No `..`, no leading dot or slash.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w-]*(\.[\w-]+)*/[A-Za-z0-9][\w.-]*$")
HUB_DATASET = re.compile(r"^(?P<repo>[A-Za-z0-9][\w-]*(\.[\w-]+)*/[A-Za-z0-9][\w.-]*)(:[\w.-]+)?$")
# Param names that hold an input path in a plugin that did not mark its fields.
_PATHLIKE_NAME = re.compile(r"(^|_)(source|sources|path|paths|file|files|dir|folder|root|personas)($|_)")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")

# Role options a REST job may set, per engine; the rest (vLLM engine args such as
# download_dir or tokenizer paths, anything that loads code) are server settings.
ROLE_OPTIONS: dict[str, set[str]] = {
    "openai": {"extra_body"},
    # state_dir stays a server setting (where batch ids and request hashes are kept).
    "openai-batch": {"extra_body", "completion_window", "batch_window_s", "max_batch_requests", "max_batch_bytes",
                     "poll_interval_s", "batch_timeout_s", "max_retries", "reuse_taken_results"},
    "transformers": {"device", "dtype", "max_batch", "vision", "gguf_file"},
    "vllm": {"max_batch", "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization",
             "max_model_len", "dtype", "enforce_eager", "max_num_seqs", "limit_mm_per_prompt", "seed",
             "quantization", "kv_cache_dtype", "enable_prefix_caching"},
}
DTYPES = {"float32", "float16", "bfloat16", "auto"}
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d{1,2})?|auto)$")
_GGUF = re.compile(r"^[\w.-]+\.gguf$")
CODE_KEYS = {"trust_remote_code", "code_revision", "auto_map"}


@dataclass(frozen=True)
class InputSource:
    """Marks a params field (`Annotated[str, InputSource()]`) that names a local file or folder,
    or a Hub dataset id. `hub_prefix`: Hub ids must carry it (e.g. "hf:"); `keep`: values that
    are neither (e.g. "builtin")."""

    hub_prefix: str = ""
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerSetting:
    """Marks a params field that loads or runs code or names an executable: a REST job may not set it."""

    why: str = "it names an executable or loads code"


SERVER_SETTING = ServerSetting()


class PolicyError(ValueError):
    """One violation, shaped like a FastAPI validation error entry."""

    def __init__(self, loc: list[str | int], msg: str, kind: str = "policy") -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg
        self.kind = kind

    def as_error(self) -> dict[str, Any]:
        return {"loc": self.loc, "msg": self.msg, "type": self.kind}


class InputNotAllowed(PermissionError):
    """Raised by readers at run time when an active policy does not cover a path."""


@dataclass(frozen=True)
class Policy:
    data_root: Path
    input_roots: tuple[Path, ...] = ()
    allowed_endpoints: tuple[str, ...] = ("loopback",)
    allow_private_downloads: bool = False
    allow_model_downloads: bool = False
    read_timeout_s: float = 30.0
    _roots: tuple[Path, ...] = field(default=(), repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        root = settings.data_root.resolve()
        extra = tuple(Path(p).expanduser().resolve() for p in settings.input_roots)
        return cls(data_root=root, input_roots=extra, allowed_endpoints=tuple(settings.allowed_endpoints),
                   allow_private_downloads=settings.allow_private_downloads,
                   allow_model_downloads=settings.allow_model_downloads, read_timeout_s=settings.read_timeout_s,
                   _roots=(root, *extra))

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._roots or (self.data_root.resolve(), *self.input_roots)

    # -- paths -----------------------------------------------------------------------------
    def inside(self, path: Path) -> bool:
        """True when `path` (symlinks followed) lies in the data root or an input root."""
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return any(resolved == r or resolved.is_relative_to(r) for r in self.roots)

    def local_input(self, value: str, loc: list[str | int]) -> Path | None:
        """The absolute path a REST job's input names, or None when it is not a local path
        (a Hub id); raises PolicyError for a path outside the roots, whether it exists or not."""
        outside = PolicyError(loc, "must be a path under the data root or an allowed input root, or a Hub id",
                              "path_not_allowed")
        if not value or "\x00" in value or len(value) > 1000 or "://" in value or value.startswith(("~", "file:")):
            raise outside
        if ".." in PurePosixPath(value).parts:
            raise outside
        raw = Path(value)
        if raw.is_absolute():
            if not self.inside(raw):
                raise outside
            return raw.resolve()
        candidate = self.data_root / raw
        if not os.path.lexists(candidate):
            return None  # not under the root: the caller decides whether it is a Hub id
        if not self.inside(candidate):  # a link out of the root
            raise outside
        return candidate.resolve()

    def require_inside(self, path: str | Path) -> None:
        if not self.inside(Path(path)):
            raise InputNotAllowed("input outside the data root and the allowed input roots")

    # -- endpoints ---------------------------------------------------------------------------
    def endpoint_allowed(self, url: str) -> bool:
        """May a REST job's role call (and send its API key to) `url`?"""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        host = (parts.hostname or "").lower().rstrip(".")
        if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
            return False
        return any(_endpoint_matches(rule.strip(), parts.scheme, host, port) for rule in self.allowed_endpoints)

    def download_address_allowed(self, address: str) -> bool:
        """May an image download connect to `address` (an IP literal)?"""
        if self.allow_private_downloads:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return _public(ip)


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast only: private, loopback, link-local (cloud metadata), shared
    (CGNAT), reserved, multicast and IPv4-mapped forms of these are all refused."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_loopback_host(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint_matches(rule: str, scheme: str, host: str, port: int) -> bool:
    rule = rule.lower()
    if not rule:
        return False
    if rule == "loopback":
        return _is_loopback_host(host)
    if "://" in rule:
        r = urlsplit(rule)
        r_port = r.port or (443 if r.scheme == "https" else 80)
        return r.scheme == scheme and (r.hostname or "").rstrip(".") == host and r_port == port
    if "/" in rule:  # CIDR
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(rule, strict=False)
        except ValueError:
            return False
    if rule.startswith("*."):
        return host.endswith(rule[1:])
    if rule.count(":") == 1:
        r_host, r_port = rule.split(":")
        return r_host == host and r_port.isdigit() and int(r_port) == port
    return rule.strip("[]") == host


# -- the process-wide policy of a worker ----------------------------------------------------------
_active: Policy | None = None


def activate(policy: Policy | None) -> None:
    """Bind the readers of this process to `policy` (a worker runs REST jobs only); None lifts it."""
    global _active
    _active = policy


def current() -> Policy | None:
    return _active


def check_readable(path: str | Path) -> None:
    """For readers: under an active policy, `path` must lie in the allowed roots."""
    if _active is not None:
        _active.require_inside(path)


def open_regular(path: str | Path, max_bytes: int | None = None) -> bytes:
    """Read a regular file whole, refusing FIFOs, devices and sockets (which can block forever
    or never end) without blocking on them, and stopping at `max_bytes` + 1 bytes read."""
    check_readable(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{Path(path).name}: not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLarge(f"{st.st_size} bytes > {max_bytes}")
        chunks, size = [], 0
        limit = max_bytes + 1 if max_bytes is not None else None
        while True:
            chunk = os.read(fd, 1 << 20 if limit is None else min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                raise FileTooLarge(f"more than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def require_regular(path: str | Path) -> None:
    """A file source must be a regular file (a FIFO would hang the reader, a device never ends)."""
    try:
        st = os.stat(path)
    except OSError:
        return  # the reader reports a missing file its own way
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise NotRegularFile(f"{Path(path).name}: not a regular file or folder")


class NotRegularFile(OSError):
    pass


class FileTooLarge(OSError):
    pass


# -- checking a REST job spec ------------------------------------------------------------------
def _markers(model: type[BaseModel], name: str) -> tuple[InputSource | None, ServerSetting | None]:
    info = model.model_fields[name]
    src = next((m for m in info.metadata if isinstance(m, InputSource)), None)
    server = next((m for m in info.metadata if isinstance(m, ServerSetting)), None)
    if src is None and server is None and _PATHLIKE_NAME.search(name):
        src = InputSource(keep=("builtin",))  # a plugin that did not mark its fields: checked all the same
    return src, server


def check_params(model: type[BaseModel], raw: Mapping[str, Any], policy: Policy,
                 prefix: list[str | int]) -> tuple[dict[str, Any], list[PolicyError]]:
    """Params with local input paths made absolute (relative ones resolve against the data
    root), and the violations found. Runs before the params model's own validators, so those
    never probe a path outside the roots."""
    out = dict(raw)
    errors: list[PolicyError] = []
    for name, value in raw.items():
        if name not in model.model_fields:
            continue  # the params model reports unknown fields itself
        src, server = _markers(model, name)
        if server is not None:
            errors.append(PolicyError([*prefix, name], f"{name} is a server setting ({server.why}); "
                                      "a REST job may not set it", "server_setting"))
            continue
        if src is None:
            continue
        try:
            if isinstance(value, str):
                out[name] = _input_value(value, src, policy, [*prefix, name])
            elif isinstance(value, list):
                out[name] = [_input_value(v, src, policy, [*prefix, name, i]) if isinstance(v, str) else v
                             for i, v in enumerate(value)]
        except PolicyError as exc:
            errors.append(exc)
    return out, errors


def _input_value(value: str, src: InputSource, policy: Policy, loc: list[str | int]) -> str:
    if value in src.keep or value == "":
        return value
    if src.hub_prefix and value.startswith(src.hub_prefix):
        if not HUB_DATASET.match(value[len(src.hub_prefix):]):
            raise PolicyError(loc, f"{src.hub_prefix!r} must be followed by a Hub dataset id (owner/name)",
                              "path_not_allowed")
        return value
    local = policy.local_input(value, loc)
    if local is not None:
        return str(local)
    if not src.hub_prefix and HUB_DATASET.match(value):
        return value  # a Hub dataset id
    raise PolicyError(loc, "not found under the data root" + (
        "" if src.hub_prefix else ", and not a Hub dataset id (owner/name)") + (
        f"; a Hub dataset is written {src.hub_prefix}owner/name" if src.hub_prefix else ""), "input_not_found")


def _loads_model(engine: str) -> bool:
    """The backend loads `model` itself (a folder or a Hub download: in the worker or the cluster),
    as its `Backend.in_process` says; a remote one only sends the name to its server. An engine
    that is not registered counts as loading, the safe side."""
    from synthgen.engine import backends

    try:
        return backends.get(engine).in_process
    except LookupError:
        return True


def check_roles(resolved: Mapping[str, Any], policy: Policy, prefix: list[str | int] | None = None
                ) -> tuple[dict[str, str], list[PolicyError]]:
    """Violations in the resolved role configs, and {role: absolute model folder} for local models."""
    errors: list[PolicyError] = []
    local_models: dict[str, str] = {}
    for role, cfg in resolved.items():
        loc: list[str | int] = list(prefix) if prefix is not None else ["body", "roles", role]
        engine = cfg.engine or "openai"
        urls = list(getattr(cfg, "base_urls", None) or []) or ([cfg.base_url] if cfg.base_url else [])
        for url in urls:  # a pool (base_urls) or the one base_url: every server gets the role's key
            if not policy.endpoint_allowed(url):
                host = urlsplit(url).hostname or "?"
                field = "base_urls" if getattr(cfg, "base_urls", None) else "base_url"
                errors.append(PolicyError([*loc, field], f"endpoint host {host!r} is not allowed on this server "
                                          "(SYNTHGEN_ALLOWED_ENDPOINTS)", "endpoint_not_allowed"))
                break
        errors.extend(_check_options(cfg.options, engine, [*loc, "options"]))
        if cfg.model and _loads_model(engine):
            try:
                local = policy.local_input(cfg.model, [*loc, "model"])
            except PolicyError as exc:
                errors.append(exc)
                continue
            if local is not None:
                local_models[role] = str(local)
            elif not HUB_ID.match(cfg.model):
                errors.append(PolicyError([*loc, "model"], "not a model folder under the data root nor a Hub id",
                                          "input_not_found"))
            elif not policy.allow_model_downloads:
                errors.append(PolicyError([*loc, "model"], "model downloads are off on this server "
                                          "(SYNTHGEN_ALLOW_MODEL_DOWNLOADS); name a model folder under the data root",
                                          "model_download_not_allowed"))
    return local_models, errors


def _check_options(options: Mapping[str, Any], engine: str, loc: list[str | int]) -> list[PolicyError]:
    errors = []
    allowed = ROLE_OPTIONS.get(engine, set())
    for key, value in options.items():
        if key in CODE_KEYS or key not in allowed:
            errors.append(PolicyError([*loc, key], f"option {key!r} is a server setting for the {engine} engine "
                                      f"(a REST job may set: {', '.join(sorted(allowed)) or 'none'})",
                                      "server_setting"))
            continue
        bad = (key == "dtype" and value not in DTYPES) or (
            key == "device" and not (isinstance(value, str) and _DEVICE.match(value))) or (
            key == "gguf_file" and not (isinstance(value, str) and _GGUF.match(value) and ".." not in value))
        if bad:
            errors.append(PolicyError([*loc, key], f"option {key!r} has a value this server does not accept",
                                      "server_setting"))
        if key == "extra_body" and _mentions_code(value):
            errors.append(PolicyError([*loc, key], "extra_body may not carry trust_remote_code", "server_setting"))
    return errors


def _mentions_code(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(k in CODE_KEYS or _mentions_code(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions_code(v) for v in value)
    return False


def bad_text(value: Any) -> bool:
    """True when a JSON value holds a string that is not valid Unicode (a lone surrogate),
    which no store or encoder downstream can write."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, Mapping):
        return any(bad_text(k) or bad_text(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(bad_text(v) for v in value)
    return False
