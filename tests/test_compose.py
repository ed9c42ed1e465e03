"""docker-compose.yml cannot run here (no Docker engine): validate it against the Compose
Specification schema vendored by check-jsonschema, then check what the service needs of it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("check-jsonschema") or f"{Path(sys.executable).parent}/check-jsonschema"
    return subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_compose_file_matches_the_compose_spec():
    proc = _validate(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_validator_rejects_a_broken_compose_file(tmp_path):
    data = yaml.safe_load(COMPOSE.read_text())
    data["services"]["llm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilitiez"] = ["gpu"]
    data["services"]["api"]["healthcheck"]["interval"] = {"seconds": 10}
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    proc = _validate(broken)
    assert proc.returncode != 0 and "capabilitiez" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_model_servers_have_gpus_health_checks_and_the_named_models(compose):
    services = compose["services"]
    for name, model in (("llm", "cyberagent/calm3-22b-chat"), ("vlm", "microsoft/Phi-3-vision-128k-instruct")):
        svc = services[name]
        assert svc["image"].startswith("vllm/vllm-openai")
        assert any(model in arg for arg in svc["command"]), svc["command"]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        assert any(str(v).startswith("hf-cache:") for v in svc["volumes"])


def test_api_workers_volumes_and_database(compose):
    services = compose["services"]
    api, worker, db = services["api"], services["worker"], services["db"]
    assert api["command"][:2] == ["synthgen", "serve"] and "/healthz" in " ".join(api["healthcheck"]["test"])
    assert worker["command"] == ["synthgen", "worker"] and worker["stop_signal"] == "SIGTERM"
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"
    for svc in (api, worker):
        assert "synthgen-data:/data" in svc["volumes"]
        assert svc["environment"]["SYNTHGEN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert svc["environment"]["SYNTHGEN_DATA_ROOT"] == "/data"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.startswith("synthgen-db:") for v in db["volumes"])
    assert {"synthgen-data", "synthgen-db", "hf-cache"} <= set(compose["volumes"])


def test_every_variable_compose_uses_is_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, flags=re.M))
    assert used <= defined, used - defined


def test_dockerfile_builds_the_service_image():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'pip install "\.\[postgres,ray\]"', text)  # Ray: executor: ray jobs, the ray profile
    assert "COPY . ./" in text  # the whole tree; setup.py maps its folders to packages
    assert "USER synthgen" in text and 'CMD ["synthgen", "serve"' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "synthgen-data" in ignored and ".env" in ignored and "tests" in ignored
