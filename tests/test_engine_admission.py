"""Exact admission: a run pays for the records it needs, not for the input budget (3 x n).

The fault this guards against: the runner filled `concurrency` slots from the whole input
budget, so `--n 5` against a server that never fails sent 60 chat requests for 5 records.
"""

from __future__ import annotations

import asyncio

import pytest
from gen_responders import persona_qa_responder
from test_runner import ECHO, _spec

from synthgen.engine.runner import run_job
from synthgen.loopback_server import LoopbackServer
from synthgen.spec import JobSpec

PERSONA_QA_REQUESTS = 4  # two turns of (question, answer) with the default params


@pytest.mark.parametrize("n", [1, 5, 50])
def test_persona_qa_sends_exactly_the_requests_n_records_need(tmp_path, n):
    with LoopbackServer(persona_qa_responder, latency=0.005) as srv:
        spec = JobSpec(generator="persona-qa", n=n, concurrency=256, out=str(tmp_path / "out"),
                       roles={"default": {"base_url": srv.base_url, "model": "m"}})
        result = asyncio.run(run_job(spec))
        assert result.stats.state == "succeeded" and result.manifest["counts"]["failed"] == 0
        assert srv.requests == n * PERSONA_QA_REQUESTS
        assert result.stats.inputs_read == n


@pytest.mark.parametrize("concurrency", [1, 7, 256])
def test_never_failing_server_one_request_per_record_at_any_concurrency(tmp_path, concurrency):
    with LoopbackServer(latency=0.002) as srv:
        spec = _spec(srv, tmp_path / "r", n=120, concurrency=concurrency, params={"skip_every": 0})
        result = asyncio.run(run_job(spec, generator=ECHO))
        assert result.manifest["counts"]["records"] == 120
        assert srv.requests == 120


def test_dropped_records_are_replaced_without_overshooting_much(tmp_path):
    """With one in five dropped, the gate lets in about n / 0.8 inputs, not 3 x n."""
    with LoopbackServer(latency=0.002) as srv:
        spec = _spec(srv, tmp_path / "r", n=200, concurrency=64, params={"skip_every": 5})
        result = asyncio.run(run_job(spec, generator=ECHO))
        assert result.manifest["counts"]["records"] == 200
        # Inputs 0..248 make 200 records (every fifth dropped); the drop-rate estimate may start a
        # few more near the end, within the 2%.
        assert 249 <= srv.requests <= 254
