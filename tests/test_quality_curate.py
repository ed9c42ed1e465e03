"""Curation end to end: a generated dataset folder (images, nested columns, key) through
dedup, filter and balance keeps every column and explains every drop; parquet/jsonl sources;
the CLI's curate and report; a job spec's `quality:` steps run by the worker after the run,
with a loopback judge, and shown on the dashboard."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_service_api import job_body, settings_for

from synthgen.loopback_server import LoopbackServer, japanese_responder, last_user_text
from synthgen.quality.curate import curate
from synthgen.quality.planted import THINGS, base_record, planted_corpus
from synthgen.service.api import create_app
from synthgen.service.store import JobStore

CLI = [sys.executable, "-m", "synthgen.service.cli"]


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (48, 48), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(8):
        x, y = rng.randrange(40), rng.randrange(40)
        img.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 8, y + 8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _generated_dataset(path, n_base=120):
    """A dataset like a generator writes: image, messages, a struct column, key; with planted
    duplicates and rows the filters must drop."""
    rows = planted_corpus(n_base, dup_share=0.3, seed=3)
    bad = {0: "申し訳ありませんが、お答えできません。", 1: "答えは360円です。" + "そして360円です。" * 8,
           2: "3個で360円です。".encode().decode("latin-1")}
    recs = []
    for i, r in enumerate(rows):
        answer = bad.get(i, r["answer"])
        recs.append({"key": r["key"], "image": {"bytes": _png(10_000 + i), "path": None},
                     "messages": [{"role": "user", "content": "<image>\n" + r["question"]},
                                  {"role": "assistant", "content": answer}],
                     "models": {"writer": "w", "answerer": "a"}, "cluster": r["cluster"], "variant": r["variant"]})
    feats = datasets.Features({
        "key": datasets.Value("string"), "image": datasets.Image(),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "models": {"writer": datasets.Value("string"), "answerer": datasets.Value("string")},
        "cluster": datasets.Value("int64"), "variant": datasets.Value("string")})
    datasets.Dataset.from_list(recs, features=feats).save_to_disk(str(path))
    return recs


def test_curate_keeps_every_column_and_explains_every_drop(tmp_path):
    recs = _generated_dataset(tmp_path / "in")
    m = curate(tmp_path / "in", tmp_path / "out", "dedup,filter,balance", batch_size=64)
    src = datasets.load_from_disk(str(tmp_path / "in"))
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out.features == src.features  # every column, images still Image()
    assert isinstance(out[0]["image"], Image.Image)
    keys = set(out["key"])
    assert keys <= {r["key"] for r in recs} and len(keys) == len(out)
    drops = [orjson.loads(x) for x in (tmp_path / "out" / "drops.jsonl").read_bytes().splitlines()]
    assert len(drops) + len(out) == len(recs) == m["input_rows"]  # every record kept or explained
    assert not {d["key"] for d in drops} & keys
    by_reason: dict[str, int] = {}
    for d in drops:
        by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + 1
    assert by_reason == m["dropped"] and m["dropped_total"] == len(drops)
    assert {"dedup_exact", "dedup_near", "filter_refusal", "filter_looping", "filter_mojibake"} <= set(by_reason)
    assert m["by_step"]["dedup"]["in"] == len(recs) and m["by_step"]["balance"]["out"] == len(out)
    # a dedup drop names its cluster's kept record, which is one of the same planted cluster
    cluster_of = {r["key"]: r["cluster"] for r in recs}
    near = [d for d in drops if d["reason"].startswith("dedup_")]
    assert all(cluster_of[d["detail"]["kept"]] == cluster_of[d["key"]] for d in near)
    # no planted cluster survives twice
    assert len(set(out["cluster"])) == len(out)


def test_parquet_and_jsonl_sources_without_key(tmp_path):
    rng = random.Random(5)
    rows = [base_record(rng) for _ in range(30)]
    rows += rows[:5]  # five exact repeats
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "qa.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    for src in (tmp_path / "qa.parquet", tmp_path / "j"):
        out = tmp_path / f"out-{src.name}"
        m = curate(src, out, "dedup")
        ds = datasets.load_from_disk(str(out))
        assert m["dropped"] == {"dedup_exact": 5} and len(ds) == 30
        assert ds.column_names == ["key", "question", "answer"] and len(set(ds["key"])) == 30
    with pytest.raises(ValueError, match="must not be IN"):
        curate(tmp_path / "j", tmp_path, "dedup", overwrite=True)  # would delete its own input
    # the streamed (Hub) reader on a local folder, and dedup against an earlier dataset
    from synthgen.quality.sources import _from_hub

    hub = _from_hub(str(tmp_path / "j"), "train")
    assert sum(b.num_rows for b in hub.batches(8)) == 35
    m = curate(tmp_path / "j", tmp_path / "again", [{"step": "dedup", "params": {"against": [str(tmp_path / "qa.parquet")]}}])
    assert m["dropped"] == {"dedup_exact": 35} and m["output_rows"] == 0
    assert m["dedup"]["against"] == {str(tmp_path / "qa.parquet"): 35}
    first = orjson.loads((tmp_path / "again" / "drops.jsonl").read_bytes().splitlines()[0])
    assert first["detail"]["kept_in"] == str(tmp_path / "qa.parquet")


def test_cli_curate_and_report(tmp_path):
    _generated_dataset(tmp_path / "in", n_base=60)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*CLI, "curate", str(tmp_path / "in"), str(tmp_path / "out"), "--steps", "dedup,filter",
                           "--param", "dedup.threshold=0.85", "--param", "filter.checks=[\"refusal\"]"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["dropped"]["filter_refusal"] == 1 and "filter_looping" not in summary["dropped"]
    man = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert man["steps"][0]["params"]["threshold"] == 0.85
    report = tmp_path / "out" / "report"
    names = {c["file"] for c in orjson.loads((report / "charts.json").read_bytes())}
    assert names == {"lengths.png", "nouns.png", "drops.png", "clusters.png"}
    assert all((report / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    from synthgen.quality.report import japanese_font

    assert "CJK" in (japanese_font() or "")  # charts draw Japanese with Noto CJK (scripts/setup.sh), not boxes
    md = (report / "report.md").read_text()
    assert "dedup_exact" in md and "![頻出名詞](nouns.png)" in md
    # a usage error says what is wrong
    bad = subprocess.run([*CLI, "curate", str(tmp_path / "in"), str(tmp_path / "o2"), "--steps", "dedup,sparkle"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "sparkle" in bad.stderr
    rep = subprocess.run([*CLI, "report", str(tmp_path / "in"), "--out", str(tmp_path / "rep")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "rep" / "lengths.png").exists() and not (tmp_path / "rep" / "drops.png").exists()


def _low(text: str) -> bool:
    return any(t in text for t in THINGS[:12])


def _responder():
    """persona-qa's writer and answerer, and a judge: questions mostly come in pairs (exact
    repeats); the judge gives 2 to questions about the first dozen THINGS and 5 to the rest."""
    counter = itertools.count()
    judged = []

    def reply(body):
        prompt = last_user_text(body)
        if "採点者" in prompt:
            judged.append(body)
            score = 2 if _low(prompt.split("## 回答")[0]) else 5
            return orjson.dumps({"correctness": score, "helpfulness": score, "fluency": score,
                                 "reason": "テスト"}).decode()
        if "問題を一つ作って" in prompt:
            rng = random.Random(next(counter) // 2)
            return "問題：" + base_record(rng)["question"]
        return japanese_responder(body)

    return reply, judged


def test_job_spec_quality_steps_run_after_the_job(tmp_path):
    from synthgen.service.worker import run_claimed

    settings = settings_for(tmp_path)
    responder, judged = _responder()
    with LoopbackServer(responder) as srv, TestClient(create_app(settings)) as client:
        body = job_body(srv.base_url, 12, params={"turns": 1}, concurrency=1,
                        quality=["dedup", "filter", {"step": "judge", "params": {"min_score": 4}}])
        bad = client.post("/v1/jobs", json={**body, "quality": [{"step": "dedup", "params": {"against": ["/etc"]}}]})
        assert bad.status_code == 422
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        store = JobStore.open(settings.resolved_database_url)
        claimed = store.claim("w1")
        assert claimed is not None and claimed.id == job_id
        assert asyncio.run(run_claimed(store, claimed, settings, "w1", threading.Event())) == "succeeded"
        run_dir = Path(store.get(job_id).out_dir)
        man = orjson.loads((run_dir / "quality" / "manifest.json").read_bytes())
        run = datasets.load_from_disk(str(run_dir))
        questions = [r["messages"][0]["content"] for r in run]
        distinct = list(dict.fromkeys(questions))
        assert len(distinct) < len(questions)  # the writer repeated itself
        assert man["input_rows"] == 12 and man["dropped"]["dedup_exact"] == 12 - len(distinct)
        assert man["by_step"]["filter"]["dropped"] == 0
        low = sum(_low(q) for q in distinct)
        assert 0 < low < len(distinct)  # the judge keeps some and drops some
        assert man["dropped"].get("judge_low_score", 0) == low and len(judged) == len(distinct)
        kept = datasets.load_from_disk(str(run_dir / "quality"))
        assert sorted(set(kept["judge_score"])) == ([5.0] if low < len(distinct) else [])
        assert man["output_rows"] == len(kept) == len(distinct) - low == 12 - man["dropped_total"]
        assert set(kept.column_names) >= {"key", "messages", "persona", "judge_score", "judge_reason"}
        page = client.get(f"/jobs/{job_id}")
        assert page.status_code == 200 and "Curation" in page.text and "dedup_exact" in page.text
        assert f"/jobs/{job_id}/quality/drops.png" in page.text
        png = client.get(f"/jobs/{job_id}/quality/drops.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        assert client.get(f"/jobs/{job_id}/quality/..%2Fmanifest.json").status_code == 404
        store.dispose()


def test_synthgen_run_applies_the_configs_quality_steps(tmp_path):
    (tmp_path / "job.yaml").write_text("n: 6\nparams: {turns: 1}\nquality: [dedup, filter]\n")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with LoopbackServer() as srv:  # the same question every time: five exact repeats
        proc = subprocess.run([*CLI, "run", "persona-qa", "-c", str(tmp_path / "job.yaml"), "--base-url", srv.base_url,
                               "--model", "M", "--out", str(tmp_path / "run"), "-q"],
                              capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "quality: 6 -> 1 records" in proc.stderr
    man = orjson.loads((tmp_path / "run" / "quality" / "manifest.json").read_bytes())
    assert man["dropped"] == {"dedup_exact": 5} and len(datasets.load_from_disk(str(tmp_path / "run"))) == 6


def test_quality_steps_obey_the_operator_policy(tmp_path):
    """In a worker the judge's endpoint and dedup's earlier datasets pass the same policy as
    the job's own roles and inputs."""
    from synthgen import policy
    from synthgen.quality.post import apply_quality
    from synthgen.spec import QualityStep

    _generated_dataset(tmp_path / "run", n_base=10)
    previous = policy.current()
    policy.activate(policy.Policy(data_root=tmp_path, allowed_endpoints=("loopback",)))
    try:
        far_judge = QualityStep.model_validate(
            {"step": "judge", "role": {"base_url": "http://10.9.8.7:8000/v1", "model": "m"}})
        with pytest.raises(PermissionError, match="not allowed"):
            apply_quality(tmp_path / "run", [far_judge])
        outside = tmp_path.parent / "elsewhere"
        _generated_dataset(outside, n_base=5)
        with pytest.raises(policy.InputNotAllowed):  # (a job spec cannot even name it: 422 at POST)
            apply_quality(tmp_path / "run", [QualityStep.model_construct(
                step="dedup", params={"against": [str(outside)]}, role=None)])
        m = apply_quality(tmp_path / "run", [QualityStep(step="dedup")], report=False)
        assert m["input_rows"] == len(datasets.load_from_disk(str(tmp_path / "run")))
    finally:
        policy.activate(previous)


def test_failing_quality_steps_fail_the_job_and_keep_the_run(tmp_path):
    from synthgen import policy
    from synthgen.service.worker import run_claimed, secret_spec_json
    from synthgen.spec import JobSpec

    settings = settings_for(tmp_path)
    store = JobStore.open(settings.resolved_database_url)
    previous = policy.current()
    policy.activate(policy.Policy(data_root=tmp_path, allowed_endpoints=("loopback",)))
    try:
        with LoopbackServer() as srv:
            spec = JobSpec.model_validate(job_body(srv.base_url, 3, params={"turns": 1}, quality=[
                {"step": "judge", "role": {"base_url": "http://10.9.8.7:8000/v1", "model": "m"}}]))
            store.create(generator="persona-qa", public_spec={}, secret_spec_json=secret_spec_json(spec),
                         out_dir=str(tmp_path / "jobs" / "q"), n=spec.n)
            claimed = store.claim("w1")
            assert asyncio.run(run_claimed(store, claimed, settings, "w1", threading.Event())) == "failed"
        row = store.get(claimed.id)
        assert row.status == "failed" and "quality steps failed" in row.error and "not allowed" in row.error
        assert len(datasets.load_from_disk(str(tmp_path / "jobs" / "q"))) == 3  # the run's data is kept
    finally:
        policy.activate(previous)
        store.dispose()
