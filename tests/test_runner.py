"""Runner semantics with small in-test generators: exactly n, failures, resume, images."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import datasets
import orjson
import pytest
from PIL import Image
from pydantic import BaseModel

from synthgen.engine.checkpoint import RunExists
from synthgen.engine.plugin import Generator, InputContext, RecordContext, Skip
from synthgen.engine.runner import RunStats, run_job
from synthgen.loopback_server import LoopbackServer
from synthgen.spec import JobSpec


class EchoParams(BaseModel):
    skip_every: int = 5
    crash_on: int = -1
    image: bool = False


def _inputs(ctx: InputContext) -> Iterator[dict[str, Any]]:
    i = 0
    while True:
        yield {"i": i}
        i += 1


async def _generate(item: dict[str, Any], ctx: RecordContext) -> list[dict[str, Any]]:
    p: EchoParams = ctx.params  # type: ignore[assignment]
    if item["i"] == p.crash_on:
        raise RuntimeError("plugin bug")
    reply = await ctx.role("writer").chat([{"role": "user", "content": f"item {item['i']}"}])
    if p.skip_every and item["i"] % p.skip_every == p.skip_every - 1:
        raise Skip("unlucky", f"item {item['i']}")
    row: dict[str, Any] = {"i": item["i"], "text": reply.text}
    if p.image:
        row["image"] = Image.new("RGB", (8 + item["i"] % 4, 8), (item["i"] % 255, 0, 0))
    return [row]


def _features(p: BaseModel) -> datasets.Features:
    f = {"i": datasets.Value("int64"), "text": datasets.Value("string")}
    if p.image:  # type: ignore[attr-defined]
        f["image"] = datasets.Image()
    return datasets.Features(f)


ECHO = Generator(name="echo", version="1", description="test", params_model=EchoParams, roles=("writer",),
                 reads="nothing", features=_features, inputs=_inputs, generate=_generate)


def _spec(srv: LoopbackServer, out, **kw: Any) -> JobSpec:
    base = {"generator": "echo", "out": str(out), "roles": {"default": {"base_url": srv.base_url, "model": "m"}},
            "flush_seconds": 0.05, "shard_rows": 7}
    base.update(kw)
    return JobSpec.model_validate(base)


def _keys(out) -> list[str]:
    return datasets.load_from_disk(str(out))["key"]


def test_exactly_n_records_with_failures_recorded(tmp_path, loopback):
    # One record at a time, so the count is exact: inputs 0..48 give 40 records and drop
    # every fifth (4, 9, ..., 44), and input 49 never starts.
    result = asyncio.run(run_job(_spec(loopback, tmp_path / "r", n=40, concurrency=1), generator=ECHO))
    keys = _keys(tmp_path / "r")
    assert len(keys) == 40 == len(set(keys))
    assert result.stats.state == "succeeded"
    man = orjson.loads((tmp_path / "r" / "manifest.json").read_bytes())
    assert man["counts"]["records"] == 40 and man["counts"]["failed"] == 9
    assert man["failures_by_reason"]["unlucky"] == man["counts"]["failed"]
    assert man["usage"]["writer"]["requests"] == 49 == loopback.requests
    failures = [orjson.loads(x) for x in (tmp_path / "r" / "failures.jsonl").read_bytes().splitlines()]
    assert len(failures) == man["counts"]["failed"]
    assert all(f["reason"] == "unlucky" and f["key"] and "input" in f for f in failures)


def test_a_plugin_exception_fails_one_record(tmp_path, loopback):
    result = asyncio.run(run_job(_spec(loopback, tmp_path / "r", n=10, params={"crash_on": 2, "skip_every": 0}),
                                 generator=ECHO))
    assert result.stats.failures_by_reason == {"error_RuntimeError": 1}
    assert len(_keys(tmp_path / "r")) == 10


def test_input_budget_ends_a_run_that_drops_everything(tmp_path, loopback):
    result = asyncio.run(run_job(_spec(loopback, tmp_path / "r", n=5, max_inputs=12,
                                       params={"skip_every": 1}), generator=ECHO))
    assert result.stats.state == "incomplete" and result.manifest["counts"]["records"] == 0
    assert len(datasets.load_from_disk(str(tmp_path / "r"))) == 0
    assert result.manifest["counts"]["failed"] == 12
    assert any("input budget" in n for n in result.stats.notes)


def test_existing_output_needs_resume(tmp_path, loopback):
    asyncio.run(run_job(_spec(loopback, tmp_path / "r", n=3), generator=ECHO))
    with pytest.raises(RunExists, match="--resume"):
        asyncio.run(run_job(_spec(loopback, tmp_path / "r", n=3), generator=ECHO))


def test_stop_then_resume_gives_exactly_n_distinct_keys(tmp_path):
    with LoopbackServer(latency=0.02) as srv:
        out = tmp_path / "r"
        stats = RunStats(target=60)

        async def stop_midway() -> Any:
            stop = asyncio.Event()
            task = asyncio.create_task(run_job(_spec(srv, out, n=60, concurrency=4), generator=ECHO,
                                               stats=stats, stop=stop))
            while stats.ok < 20:
                await asyncio.sleep(0.01)
            stop.set()
            return await task

        first = asyncio.run(stop_midway())
        assert first.stats.state == "stopped"
        assert 20 <= first.manifest["counts"]["records"] < 60
        second = asyncio.run(run_job(_spec(srv, out, n=60, concurrency=4, resume=True), generator=ECHO))
    keys = _keys(out)
    assert second.stats.state == "succeeded"
    assert len(keys) == 60 == len(set(keys))
    texts = datasets.load_from_disk(str(out))["i"]
    assert len(set(texts)) == 60


def test_uncommitted_shards_are_discarded_on_resume(tmp_path, loopback):
    out = tmp_path / "r"
    asyncio.run(run_job(_spec(loopback, out, n=10), generator=ECHO))
    # a shard written by a run that died before its marker moved
    stray = out / ".synthgen" / "rows-999999.parquet"
    stray.write_bytes(b"garbage")
    (out / "failures.jsonl").open("ab").write(b'{"key": "torn')
    result = asyncio.run(run_job(_spec(loopback, out, n=12, resume=True), generator=ECHO))
    assert not stray.exists()
    assert len(set(_keys(out))) == 12 == len(_keys(out))
    for line in (out / "failures.jsonl").read_bytes().splitlines():
        orjson.loads(line)
    assert result.stats.state == "succeeded"


def test_image_rows_become_image_features(tmp_path, loopback):
    asyncio.run(run_job(_spec(loopback, tmp_path / "r", n=5, params={"image": True, "skip_every": 0}),
                        generator=ECHO))
    ds = datasets.load_from_disk(str(tmp_path / "r"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size[1] == 8


def test_same_seed_same_keys_other_seed_other_keys(tmp_path, loopback):
    asyncio.run(run_job(_spec(loopback, tmp_path / "a", n=5, params={"skip_every": 0}), generator=ECHO))
    asyncio.run(run_job(_spec(loopback, tmp_path / "b", n=5, params={"skip_every": 0}), generator=ECHO))
    asyncio.run(run_job(_spec(loopback, tmp_path / "c", n=5, seed=1, params={"skip_every": 0}), generator=ECHO))
    assert sorted(_keys(tmp_path / "a")) == sorted(_keys(tmp_path / "b"))
    assert not set(_keys(tmp_path / "a")) & set(_keys(tmp_path / "c"))
