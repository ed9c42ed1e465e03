"""persona-qa end to end through the real CLI against a loopback OpenAI-compatible server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import datasets
import orjson
import pytest
from gen_responders import persona_qa_responder

from synthgen.loopback_server import LoopbackServer, Reply, last_user_text

CLI = [sys.executable, "-m", "synthgen.service.cli"]


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_run_writes_japanese_multiturn_dataset(tmp_path):
    calls = {"n": 0}

    def flaky(body):
        calls["n"] += 1
        if calls["n"] % 17 == 0:
            return Reply(status=500)
        if calls["n"] % 23 == 0:
            return Reply(status=429, headers={"Retry-After": "0"})
        if calls["n"] % 29 == 0:
            return Reply(raw=b"{broken")
        return persona_qa_responder(body)

    with LoopbackServer(flaky) as srv:
        srv.keep_bodies = True
        out = tmp_path / "run"
        proc = _run("run", "persona-qa", "--n", "30", "--base-url", srv.base_url, "--model", "M",
                    "--out", str(out), "--set", "params.turns=3")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 30 and len(set(ds["key"])) == 30
    row = ds[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 3
    assert row["models"] == {"writer": "M", "answerer": "M"}
    assert row["task"] in {"math", "reasoning", "coding", "knowledge"} and row["persona"]
    # the follow-up request carries Q1 and A1, so Q2 stays on the same problem
    follow = next(b for b in srv.bodies if "追加の質問" in last_user_text(b))
    assert [m["role"] for m in follow["messages"]] == ["user", "assistant", "user"]
    man = orjson.loads((out / "manifest.json").read_bytes())
    assert man["usage"]["writer"]["retries"] + man["usage"]["answerer"]["retries"] > 0
    assert set(man["prompt_templates"]) == {"question", "followup", "answer_system"}
    assert row["difficulty"] in {"basic", "intermediate", "advanced"} and row["keypoint"] == ""
    assert "records written" in proc.stdout


def test_bad_outputs_are_dropped_with_reasons(tmp_path):
    asked = {"n": 0}

    def messy(body):
        if "問題を一つ作って" in last_user_text(body):
            asked["n"] += 1
            if asked["n"] % 3 == 0:
                return "Here is an English question about diving?"
            if asked["n"] % 5 == 0:
                return "問題：30÷5はいくつですか。答えは6です。"
        return persona_qa_responder(body)

    with LoopbackServer(messy) as srv:
        proc = _run("run", "persona-qa", "--n", "10", "--base-url", srv.base_url, "--model", "M",
                    "--out", str(tmp_path / "r"), "--max-inputs", "60")
    assert proc.returncode == 0, proc.stderr
    failures = [orjson.loads(x) for x in (tmp_path / "r" / "failures.jsonl").read_bytes().splitlines()]
    reasons = {f["reason"] for f in failures}
    assert reasons <= {"not_japanese", "question_leaks_answer"} and reasons


def test_kill_midway_then_resume_gives_exactly_n(tmp_path):
    with LoopbackServer(persona_qa_responder, latency=0.03) as srv:
        out = tmp_path / "run"
        args = [*CLI, "run", "persona-qa", "--n", "100", "--base-url", srv.base_url, "--model", "M",
                "--out", str(out), "--concurrency", "8", "--set", "flush_seconds=0.2", "--set", "shard_rows=5"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marker = out / ".synthgen" / "progress.json"
        deadline = time.time() + 120
        while time.time() < deadline:
            if marker.exists() and orjson.loads(marker.read_bytes())["records"] >= 20:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        written = orjson.loads(marker.read_bytes())["records"]
        assert 20 <= written < 100
        again = _run("run", "persona-qa", "--n", "100", "--base-url", srv.base_url, "--model", "M",
                     "--out", str(out), "--concurrency", "8", "--resume")
    assert again.returncode == 0, again.stderr
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 100 and len(set(ds["key"])) == 100


def test_config_errors_are_one_clear_line(tmp_path):
    proc = _run("run", "persona-qa", "--set", "writer.temperature=-3", "--base-url", "http://127.0.0.1:9/v1",
                "--model", "M")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "temperature" in proc.stderr
    proc = _run("run", "persona-qa", "--set", "params.tunrs=3", "--base-url", "http://127.0.0.1:9/v1", "--model", "M")
    assert proc.returncode == 2 and "tunrs" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("run", "no-such-generator")
    assert proc.returncode == 2 and "unknown generator" in proc.stderr
    proc = _run("run", "persona-qa", "--base-url", "http://127.0.0.1:9/v1")
    assert proc.returncode == 2 and "model" in proc.stderr


def test_generators_lists_persona_qa():
    proc = _run("generators", "--json")
    listed = orjson.loads(proc.stdout)
    schema = listed["persona-qa"]
    assert schema["roles"] == ["writer", "answerer"]
    assert {"turns", "driver", "difficulties", "final_answer_marker", "max_answer_chars"} <= set(
        schema["params_schema"]["properties"])
    # the breadth of every generator is listed with its params (issue 18)
    props = {name: set(g["params_schema"]["properties"]) for name, g in listed.items()}
    assert listed["preference-pairs"]["roles"] == ["writer", "answerer", "rival", "judge"]
    assert {"contrast", "temperatures", "judge_both_orders", "driver"} <= props["preference-pairs"]
    assert {"categories", "categories_file", "personas", "difficulties", "min_turns", "max_turns",
            "multi_image_chance", "images_per_record"} <= props["category-recaption"]
    assert {"style_bank", "styles", "styles_per_image", "require_polite"} <= props["caption-translate"]
    assert {"layouts", "font_kinds", "degrade_chance", "degradations", "value_label_chance"} <= props["html-render"]


@pytest.mark.slow
def test_embedded_model_run_ends_with_summary(tmp_path):
    """The README's first command, shortened: no server, the bundled model, a clear summary."""
    proc = _run("run", "persona-qa", "--n", "1", "--max-inputs", "2", "--out", str(tmp_path / "smoke"),
                "--set", "default.max_tokens=24", timeout=300)
    assert "smoke-test model" in proc.stderr
    assert "records written" in proc.stdout
    man = orjson.loads((tmp_path / "smoke" / "manifest.json").read_bytes())
    # Exit codes: 0 when the one record passed the checks, 3 (incomplete) when both inputs were dropped.
    assert proc.returncode == {"succeeded": 0, "incomplete": 3}[man["state"]], proc.stderr
    # Exact admission: a second input starts only after the first was dropped.
    tried = 1 if man["counts"]["records"] and not man["counts"]["failed"] else 2
    assert man["counts"]["records"] + man["counts"]["failed"] == man["counts"]["inputs_read"] == tried
    assert man["usage"]["writer"]["requests"] >= 2
