"""A new backend is one module plus one entry point; the engine's timeout and retries wrap it."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest
from test_runner import ECHO

from synthgen.engine import backends
from synthgen.engine.errors import RequestError
from synthgen.engine.roles import build_roles, resolve_roles
from synthgen.engine.runner import run_job
from synthgen.spec import JobSpec, RoleConfig

MODULE = '''
import asyncio
from synthgen.engine.backends import Backend
from synthgen.engine.messages import ChatResult

class Shout:
    def __init__(self, cfg):
        self.model = cfg.model or "shout"
        self.hang = bool(cfg.options.get("hang"))

    async def complete(self, messages, sampling, timeout):
        if self.hang:
            await asyncio.sleep(3600)
        text = messages[-1]["content"].upper()
        return ChatResult(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=2, model=self.model)

    async def aclose(self):
        pass

backend = Backend(name="shout", description="test", make=Shout, in_process=True)
'''


@pytest.fixture
def shout_backend(tmp_path, monkeypatch):
    (tmp_path / "shout_backend.py").write_text(textwrap.dedent(MODULE))
    dist = tmp_path / "shout_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[synthgen.backends]\nshout = shout_backend:backend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    backends._registered.cache_clear()
    backends.get.cache_clear()
    yield
    sys.modules.pop("shout_backend", None)
    backends._registered.cache_clear()
    backends.get.cache_clear()


def test_registered_backends():
    assert {"openai", "openai-batch", "transformers", "vllm"} <= set(backends.names())
    assert backends.get("openai").own_timeout and backends.get("transformers").in_process


def test_a_third_party_backend_runs_a_job(tmp_path, shout_backend):
    spec = JobSpec(generator="echo", n=6, out=str(tmp_path / "r"), params={"skip_every": 0},
                   roles={"default": {"engine": "shout"}})
    result = asyncio.run(run_job(spec, generator=ECHO))
    assert result.stats.state == "succeeded"
    assert result.manifest["usage"]["writer"]["requests"] == 6
    assert result.manifest["models"]["writer"]["engine"] == "shout"


def test_the_role_times_out_a_backend_that_cannot(shout_backend):
    resolved = resolve_roles({"default": RoleConfig(engine="shout", timeout=0.2, max_attempts=1,
                                                    options={"hang": True})}, ("writer",))
    role = build_roles(resolved)["writer"]
    with pytest.raises(RequestError) as err:
        asyncio.run(asyncio.wait_for(role.chat([{"role": "user", "content": "hi"}]), 5))
    assert err.value.reason == "timeout"


def test_unknown_engine_is_a_clear_spec_error():
    with pytest.raises(ValueError, match=r"unknown engine 'nope' \(registered: .*openai"):
        resolve_roles({"default": RoleConfig(engine="nope")}, ("writer",))
