"""The CLI says what happened and exits accordingly (documented in service/cli.py and the README):
0 complete, 1 failed, 2 usage error, 3 incomplete, 130 interrupted."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import orjson
import pytest
from typer.testing import CliRunner

from synthgen.engine.checkpoint import ShardStore
from synthgen.loopback_server import LoopbackServer
from synthgen.service import cli

CLI = [sys.executable, "-m", "synthgen.service.cli"]
DEAD = ["--base-url", "http://127.0.0.1:9/v1", "--model", "M"]  # nothing listens on port 9


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=180, env=env)


def test_unreachable_endpoint_fails_with_the_reason(tmp_path):
    proc = _run("run", "persona-qa", "--n", "5", *DEAD, "--out", str(tmp_path / "r"), "-q",
                "--set", "default.max_attempts=1", "--concurrency", "1")
    assert proc.returncode == 1, proc.stderr
    assert "endpoint unreachable" in proc.stdout and "max-inputs" not in proc.stdout
    man = orjson.loads((tmp_path / "r" / "manifest.json").read_bytes())
    # One at a time: it stops at the third connection failure instead of spending the budget of 15.
    assert man["state"] == "failed" and man["counts"]["records"] == 0
    assert man["counts"]["failed"] == man["counts"]["inputs_read"] == 3


def test_empty_source_fails_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "pictures").mkdir()
    out = tmp_path / "r"
    proc = _run("run", "caption-translate", "--n", "2", *DEAD, "--set", f"params.source={tmp_path / 'pictures'}",
                "--out", str(out), "-q")
    assert proc.returncode == 1 and "source empty" in proc.stdout and "max-inputs" not in proc.stdout
    assert not out.exists()  # nothing written: the next try needs no --resume


def test_usage_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "a-file").write_text("x")
    for args, needle in [
        (["--config", str(tmp_path)], "directory"),
        (["--out", str(tmp_path / "a-file")], "a-file"),
        (["--seed", str(2**70)], "seed"),
    ]:
        proc = _run("run", "persona-qa", "--n", "1", *DEAD, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and needle in proc.stderr, (args, proc.stderr)


def test_a_run_that_fails_before_writing_leaves_no_marker(tmp_path, monkeypatch):
    """A generator whose input stream raises (a spec problem found at run time) blocks no next run."""
    out = tmp_path / "r"
    proc = _run("run", "persona-qa", "--n", "1", *DEAD, "--set", f"params.personas={tmp_path / 'none.jsonl'}",
                "--out", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (out / ".synthgen").exists()


def test_incomplete_exits_3_and_complete_exits_0(tmp_path):
    with LoopbackServer(lambda body: "no japanese here") as srv:
        proc = _run("run", "persona-qa", "--n", "2", "--max-inputs", "3", "--base-url", srv.base_url,
                    "--model", "M", "--out", str(tmp_path / "bad"), "-q")
    assert proc.returncode == 3, proc.stderr
    assert "input budget spent (3 inputs)" in proc.stdout


def test_disk_full_is_named_and_resumable(tmp_path, monkeypatch):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "rows.parquet"))

    monkeypatch.setattr(ShardStore, "_commit", full)
    with LoopbackServer() as srv:
        result = CliRunner().invoke(cli.app, ["run", "persona-qa", "--n", "2", "--base-url", srv.base_url,
                                              "--model", "M", "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 1
    assert "disk full" in result.output and "--resume" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("state,code", [("succeeded", 0), ("incomplete", 3), ("stopped", 130), ("failed", 1)])
def test_exit_codes_follow_the_state(state, code):
    class R:
        class stats:
            pass

    R.stats.state = state
    assert cli._exit_code(R) == code  # type: ignore[arg-type]


def test_run_push_to_hub_goes_through_synthgen_publish(tmp_path):
    """`synthgen run --push-to-hub` publishes the finished run with a card (not a raw push_to_hub)."""
    from synthgen.publish.loopback_hub import LoopbackHub

    with LoopbackHub() as hub, LoopbackServer() as srv:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run([*CLI, "run", "persona-qa", "--n", "3", "--base-url", srv.base_url, "--model", "M",
                               "--out", str(tmp_path / "r"), "-q", "--push-to-hub", "org/qa"],
                              capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"published: {hub.endpoint}/datasets/org/qa" in proc.stdout
        assert hub.token not in proc.stdout + proc.stderr
        repo = hub.repo("org/qa")
        assert repo.private and "README.md" in repo.files
        assert any(name.startswith("persona-qa/train-") for name in repo.files)
