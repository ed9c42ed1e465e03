"""The compose `ray` profile: a Ray head and workers on the synthgen image, token-authenticated,
that the synthgen workers can submit `executor: ray` jobs to (the file itself is validated
against the Compose Specification in test_compose.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def test_ray_profile_starts_a_head_and_workers_on_the_synthgen_image():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    for svc in (head, worker):
        assert svc["profiles"] == ["ray"] and svc["image"] == services["api"]["image"]
        assert svc["environment"]["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in svc["environment"]
        assert "shm_size" in svc
    assert head["command"][:3] == ["ray", "start", "--head"] and "--block" in head["command"]
    assert "health-check" in head["healthcheck"]["test"]
    assert all(p.startswith("127.0.0.1:") for p in head["ports"])  # the dashboard stays on the host
    assert "--address=ray-head:6379" in worker["command"] and "--block" in worker["command"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    # the services without a profile are the default stack; the ray ones only start on request
    assert "profiles" not in services["api"] and "profiles" not in services["worker"]
    env = services["worker"]["environment"]
    assert "SYNTHGEN_RAY_ADDRESS" in env and env["RAY_AUTH_MODE"] == "token"
