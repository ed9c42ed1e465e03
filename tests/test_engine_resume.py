"""Resume keeps one record per input and never mixes provenances silently.

Faults this guards against: after a one-line template edit, resume re-ran the same inputs
under new keys (33 of 200 inputs appeared twice); resuming with another model was accepted
silently and the manifest named one model while most rows came from the other.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import datasets
import orjson
import pytest
from gen_responders import persona_qa_responder
from pydantic import BaseModel

from synthgen.engine.checkpoint import ProvenanceChanged, RunExists
from synthgen.engine.plugin import Generator, InputContext, RecordContext
from synthgen.engine.runner import RunStats, run_job
from synthgen.engine.runs import open_run
from synthgen.loopback_server import LoopbackServer
from synthgen.spec import JobSpec

CLI = [sys.executable, "-m", "synthgen.service.cli"]


class P(BaseModel):
    pass


def _inputs(ctx: InputContext[P]) -> Iterator[dict[str, Any]]:
    i = 0
    while True:
        yield {"i": i}
        i += 1


async def _generate(item: dict[str, Any], ctx: RecordContext[P]) -> list[dict[str, Any]]:
    prompt = ctx.prompts.render("ask", i=item["i"])
    reply = await ctx.role("writer").chat([{"role": "user", "content": prompt}])
    return [{"i": item["i"], "prompt": prompt, "text": reply.text}]


def _gen(prompt_dir, version: str = "1") -> Generator[P]:
    return Generator[P](name="templated", version=version, description="test", params_model=P, roles=("writer",),
                        reads="nothing", inputs=_inputs, generate=_generate, prompt_dir=prompt_dir,
                        features=lambda _p: datasets.Features({"i": datasets.Value("int64"),
                                                               "prompt": datasets.Value("string"),
                                                               "text": datasets.Value("string")}))


def _spec(srv: LoopbackServer, out, model: str = "m", **kw: Any) -> JobSpec:
    return JobSpec.model_validate({"generator": "templated", "out": str(out), "flush_seconds": 0.05, "shard_rows": 5,
                                   "roles": {"default": {"base_url": srv.base_url, "model": model}}, **kw})


@pytest.fixture
def prompts(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "ask.j2").write_text("問題 {{ i }} を解いてください。", encoding="utf-8")
    return folder


def _stop_after(spec: JobSpec, gen: Generator[P], records: int) -> Any:
    stats = RunStats(target=spec.n)

    async def go() -> Any:
        stop = asyncio.Event()
        task = asyncio.create_task(run_job(spec, generator=gen, stats=stats, stop=stop))
        while stats.ok < records:
            await asyncio.sleep(0.005)
        stop.set()
        return await task

    return asyncio.run(go())


def test_template_edit_stops_resume_and_names_the_template(tmp_path, prompts):
    with LoopbackServer(latency=0.01) as srv:
        out = tmp_path / "r"
        first = _stop_after(_spec(srv, out, n=40, concurrency=4), _gen(prompts), 12)
        assert first.stats.state == "stopped"
        (prompts / "ask.j2").write_text("次の問題 {{ i }} を丁寧に解いてください。", encoding="utf-8")
        with pytest.raises(ProvenanceChanged, match=r"prompt template ask.*--accept-changes.*--refresh"):
            asyncio.run(run_job(_spec(srv, out, n=40, resume=True), generator=_gen(prompts)))
        with pytest.raises(ProvenanceChanged, match=r"generator version 1 -> 2"):
            asyncio.run(run_job(_spec(srv, out, n=40, resume=True), generator=_gen(prompts, "2")))
        # Keep the old records, fill the rest under the new template: each input once.
        kept = first.manifest["counts"]["records"]
        done = asyncio.run(run_job(_spec(srv, out, n=40, resume=True, accept_changes=True), generator=_gen(prompts)))
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 40 and sorted(ds["i"]) == list(range(40))
    old = [r for r in ds if r["prompt"].startswith("問題")]
    assert len(old) == kept and len(ds) - kept == sum(r["prompt"].startswith("次の") for r in ds)
    prov = done.manifest["provenance"]
    assert sorted(prov["records"].values()) == sorted([kept, 40 - kept])
    assert prov["records"][prov["current"]] == 40 - kept
    assert prov["details"][prov["current"]]["prompt_templates"]["ask"] != next(
        d for pid, d in prov["details"].items() if pid != prov["current"])["prompt_templates"]["ask"]


def test_refresh_regenerates_records_of_the_old_provenance(tmp_path, prompts):
    with LoopbackServer(latency=0.005) as srv:
        out = tmp_path / "r"
        _stop_after(_spec(srv, out, n=30, concurrency=3), _gen(prompts), 10)
        done = asyncio.run(run_job(_spec(srv, out, model="other", n=30, resume=True, refresh=True),
                                   generator=_gen(prompts)))
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 30 and sorted(ds["i"]) == list(range(30))
    prov = done.manifest["provenance"]
    assert prov["records"] == {prov["current"]: 30}
    assert prov["details"][prov["current"]]["models"]["writer"]["model"] == "other"
    assert any("refreshed" in note for note in done.stats.notes)
    assert list((out / ".synthgen" / "superseded").glob("rows-*.parquet"))


def test_damaged_and_missing_shards_are_set_aside_and_regenerated(tmp_path, prompts):
    with LoopbackServer(latency=0.005) as srv:
        out = tmp_path / "r"
        _stop_after(_spec(srv, out, n=40, concurrency=2), _gen(prompts), 20)
        shards = sorted((out / ".synthgen").glob("rows-*.parquet"))
        assert len(shards) >= 3
        shards[0].write_bytes(shards[0].read_bytes()[:-7])  # torn
        shards[1].unlink()  # gone
        done = asyncio.run(run_job(_spec(srv, out, n=40, resume=True), generator=_gen(prompts)))
    assert done.stats.state == "succeeded"
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 40 and sorted(ds["i"]) == list(range(40))
    assert any("damaged or missing shards: 2 shard(s)" in note for note in done.stats.notes)
    assert (out / ".synthgen" / "damaged" / shards[0].name).exists()


def test_unreadable_marker_is_a_clear_error(tmp_path, prompts):
    with LoopbackServer() as srv:
        out = tmp_path / "r"
        asyncio.run(run_job(_spec(srv, out, n=3), generator=_gen(prompts)))
        (out / ".synthgen" / "progress.json").write_bytes(b"{not json")
        with pytest.raises(RunExists, match="progress marker is unreadable"):
            asyncio.run(run_job(_spec(srv, out, n=3, resume=True), generator=_gen(prompts)))


def test_run_api_reads_rows_failures_and_manifest(tmp_path, prompts):
    with LoopbackServer() as srv:
        out = tmp_path / "r"
        asyncio.run(run_job(_spec(srv, out, n=12), generator=_gen(prompts)))
    run = open_run(out)
    assert run.finished and run.count_rows() == 12
    everything = run.rows(0, 12)  # commit order: records finish out of input order
    assert sorted(r["i"] for r in everything) == list(range(12))
    assert run.rows(10, 5) == everything[10:12]
    assert run.manifest()["counts"]["records"] == 12 and run.failures() == []
    assert len(run.dataset()) == 12


def test_kill_then_resume_with_another_model_needs_a_decision_and_ends_exact(tmp_path):
    """SIGKILL mid-run, then resume with another model: refused with the reason, then accepted."""
    with LoopbackServer(persona_qa_responder, latency=0.03) as srv:
        out = tmp_path / "run"
        base = [*CLI, "run", "persona-qa", "--n", "60", "--base-url", srv.base_url, "--out", str(out),
                "--concurrency", "6", "--set", "flush_seconds=0.2", "--set", "shard_rows=4"]
        proc = subprocess.Popen([*base, "--model", "A"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marker = out / ".synthgen" / "progress.json"
        deadline = time.time() + 120
        while time.time() < deadline:
            if marker.exists() and orjson.loads(marker.read_bytes())["records"] >= 12:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        written = orjson.loads(marker.read_bytes())["records"]
        assert 12 <= written < 60
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
        refused = subprocess.run([*base, "--model", "B", "--resume"], capture_output=True, text=True, env=env,
                                 timeout=120)
        assert refused.returncode == 2 and "model of role" in refused.stderr and "Traceback" not in refused.stderr
        again = subprocess.run([*base, "--model", "B", "--resume", "--accept-changes"], capture_output=True,
                               text=True, env=env, timeout=180)
    assert again.returncode == 0, again.stderr
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 60 and len(set(ds["key"])) == 60
    man = orjson.loads((out / "manifest.json").read_bytes())
    by_model = {d["models"]["writer"]["model"]: man["provenance"]["records"][pid]
                for pid, d in man["provenance"]["details"].items()}
    assert by_model == {"A": written, "B": 60 - written}
