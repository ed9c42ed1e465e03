"""Installing synthgen puts exactly one top-level package into site-packages: `synthgen`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_one_namespace_and_ships_prompts(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("synthgen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"synthgen"}, tops
    assert "synthgen/service/cli.py" in names
    assert "synthgen/engine/runner.py" in names
    assert "synthgen/prompts/persona_qa/question.j2" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "persona-qa = synthgen.generators.persona_qa:generator" in entry_points
