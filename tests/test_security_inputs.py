"""What a REST job may read and run (#12 items 1, 2, 4, 5): input paths confined to the data
root and the operator's input roots, code knobs and executables refused, bad Unicode isolated
to its own request, and 422s that reveal neither existence nor the absolute data root."""

from __future__ import annotations

import json
from concurrent.futures import Future

import pytest
from fastapi.testclient import TestClient
from test_service_api import settings_for

from synthgen import policy
from synthgen.personas.loaders import load_personas
from synthgen.service.api import create_app
from synthgen.service.store.jobs import JobStore

URL = "http://127.0.0.1:9/v1"
PERSONA = '{"persona": "東京の小学校教師"}\n'


@pytest.fixture
def tree(tmp_path):
    root, outside, shared = tmp_path / "root", tmp_path / "outside", tmp_path / "shared"
    for d in (root, outside, shared):
        d.mkdir()
    (outside / "secret.jsonl").write_text(PERSONA)
    (outside / "hostname.txt").write_text("private\n")
    (shared / "team.jsonl").write_text(PERSONA)
    (root / "mine.jsonl").write_text(PERSONA)
    (root / "link").symlink_to(outside)
    (root / "models" / "tiny").mkdir(parents=True)
    return tmp_path


def client_for(tmp_path, **extra):
    settings = settings_for(tmp_path / "root", input_roots=[tmp_path / "shared"], **extra)
    return TestClient(create_app(settings))


def persona_job(personas, **extra):
    return {"generator": "persona-qa", "n": 1, "params": {"personas": personas},
            "roles": {"default": {"base_url": URL, "model": "M"}}, **extra}


def stored_spec(client, job_id):
    return json.loads(client.app.state.store.secret_spec(job_id))


def assert_quiet(r, tmp_path):
    """A 422 that names neither the data root nor anything about the server's other files."""
    assert r.status_code == 422, r.text
    assert str(tmp_path) not in r.text and "private" not in r.text


OUTSIDE_VALUES = ["{o}/secret.jsonl", "{o}/missing.jsonl", "/etc/passwd", "../outside/secret.jsonl",
                  "link/secret.jsonl", "~/secret.jsonl", "file://{o}/secret.jsonl", "a/../../outside/secret.jsonl"]


def test_persona_paths_outside_the_roots_are_refused_alike(tree):
    with client_for(tree) as client:
        details = set()
        for raw in OUTSIDE_VALUES:
            r = client.post("/v1/jobs", json=persona_job(raw.format(o=tree / "outside")))
            assert_quiet(r, tree)
            assert r.json()["detail"][0]["loc"] == ["body", "params", "personas"]
            details.add(r.json()["detail"][0]["msg"])
        # an existing and a missing file outside answer the same: no existence oracle
        assert len(details) == 1, details


def test_relative_inputs_resolve_against_the_data_root_and_input_roots_are_readable(tree):
    with client_for(tree) as client:
        r = client.post("/v1/jobs", json=persona_job("mine.jsonl"))
        assert r.status_code == 201, r.text
        assert r.json()["spec"]["params"]["personas"] == "mine.jsonl"  # the public spec as given
        assert stored_spec(client, r.json()["id"])["params"]["personas"] == str(tree / "root" / "mine.jsonl")
        shared = client.post("/v1/jobs", json=persona_job(str(tree / "shared" / "team.jsonl")))
        assert shared.status_code == 201, shared.text
        for ok in ("builtin", "proj-persona/PersonaHub:persona"):  # the bundled set and Hub ids stay allowed
            assert client.post("/v1/jobs", json=persona_job(ok)).status_code == 201
        missing = client.post("/v1/jobs", json=persona_job("nothing-here.jsonl"))
        assert_quiet(missing, tree)


@pytest.mark.parametrize("source", ["hf:../../etc", "hf:/etc", "{o}", "../outside", "/etc", "link"])
def test_image_sources_outside_the_roots_are_refused(tree, source):
    body = {"generator": "caption-translate", "n": 1, "params": {"source": source.format(o=tree / "outside")},
            "roles": {"default": {"base_url": URL, "model": "M"}}}
    with client_for(tree) as client:
        r = client.post("/v1/jobs", json=body)
        assert_quiet(r, tree)
        assert r.json()["detail"][0]["loc"] == ["body", "params", "source"]
        body["params"]["source"] = "hf:owner/images"
        assert client.post("/v1/jobs", json=body).status_code == 201


def test_html_render_source_and_chromium(tree):
    body = {"generator": "html-render", "n": 1, "params": {"source": str(tree / "outside" / "hostname.txt")},
            "roles": {"default": {"base_url": URL, "model": "M"}}}
    with client_for(tree) as client:
        assert_quiet(client.post("/v1/jobs", json=body), tree)
        (tree / "root" / "texts.txt").write_text("本文です。\n")
        body["params"] = {"source": "texts.txt", "chromium": "/tmp/evil.sh"}
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "server_setting"
        body["params"] = {"source": "texts.txt"}
        assert client.post("/v1/jobs", json=body).status_code == 201


@pytest.mark.parametrize("role, kind", [
    ({"base_url": URL, "model": "M", "options": {"trust_remote_code": True}}, "server_setting"),
    ({"base_url": URL, "model": "M", "options": {"extra_body": {"trust_remote_code": True}}}, "server_setting"),
    ({"engine": "vllm", "model": "models/tiny", "options": {"download_dir": "/tmp/x"}}, "server_setting"),
    ({"engine": "vllm", "model": "models/tiny", "options": {"tokenizer": "/etc"}}, "server_setting"),
    ({"engine": "transformers", "model": "models/tiny", "options": {"gguf_file": "../../x.gguf"}}, "server_setting"),
    ({"engine": "transformers", "model": "models/tiny", "options": {"dtype": "load"}}, "server_setting"),
    ({"engine": "transformers", "model": "/etc"}, "path_not_allowed"),
    ({"engine": "transformers", "model": "link"}, "path_not_allowed"),
    ({"engine": "transformers", "model": "org/some-model"}, "model_download_not_allowed"),
])
def test_role_code_knobs_and_model_sources_are_server_settings(tree, role, kind):
    with client_for(tree) as client:
        r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1, "roles": {"default": role}})
        assert_quiet(r, tree)
        assert r.json()["detail"][0]["type"] == kind


def test_local_model_folders_and_opted_in_downloads(tree):
    with client_for(tree) as client:
        r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1,
                                          "roles": {"default": {"engine": "transformers", "model": "models/tiny",
                                                                "options": {"device": "cpu", "dtype": "float32"}}}})
        assert r.status_code == 201, r.text
        roles = stored_spec(client, r.json()["id"])["roles"]
        assert roles["writer"]["model"] == roles["answerer"]["model"] == str(tree / "root" / "models" / "tiny")
        assert r.json()["spec"]["roles"]["default"]["model"] == "models/tiny"
        # the embedded smoke model needs no download and still works by default
        assert client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1}).status_code == 201
    with client_for(tree, allow_model_downloads=True) as client:
        r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1,
                                          "roles": {"default": {"engine": "transformers", "model": "org/m"}}})
        assert r.status_code == 201, r.text


def test_training_code_knobs_and_model_downloads_are_refused(tree):
    base = {"model": {"vision": "models/tiny", "lm": "models/tiny"}, "data": {"sources": [{"path": "jobs/x"}]},
            "output_dir": "models/out"}
    with client_for(tree) as client:
        for bad, loc in [
            ({**base, "model": {**base["model"], "trust_remote_code": True}}, ["body", "model", "trust_remote_code"]),
            ({**base, "model": {**base["model"], "attn_implementation": "kernels-community/flash-attn"}},
             ["body", "model", "attn_implementation"]),
            ({**base, "model": {"vision": "google/siglip-base", "lm": "models/tiny"}}, ["body", "model", "vision"]),
            ({**base, "data": {"sources": [{"path": str(tree / "outside")}]}}, ["body", "data", "sources", 0, "path"]),
            ({**base, "output_dir": str(tree / "outside")}, ["body", "output_dir"]),
        ]:
            r = client.post("/v1/trainings", json=bad)
            assert_quiet(r, tree)
            assert r.json()["detail"][0]["loc"] == loc


def test_lone_surrogates_fail_only_their_own_request(tree):
    bad_bodies = [
        b'{"generator": "persona-qa", "n": 1, "params": {"persona_column": "\\ud800"}, '
        b'"roles": {"default": {"base_url": "http://127.0.0.1:9/v1", "model": "M"}}}',
        b'{"generator": "persona-qa", "n": 1, "roles": {"default": {"base_url": "http://127.0.0.1:9/v1", '
        b'"model": "M", "api_key": "sk-\\udfff"}}}',
        b'{"generator": "persona-qa", "n": 1, "params": {"\\ud801x": 1}}',
    ]
    with client_for(tree) as client:
        for raw in bad_bodies:
            r = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["type"] == "unicode"
        r = client.post("/v1/trainings", content=b'{"output_dir": "models/\\ud800", "model": {"vision": "x"}}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "unicode"
        assert client.get("/v1/trainings").status_code == 200
        assert client.post("/v1/jobs", json=persona_job("builtin")).status_code == 201
        assert client.get("/v1/jobs").status_code == 200 and client.get("/v1/jobs").json()["total"] == 1


def test_a_bad_row_in_a_grouped_insert_fails_alone(tmp_path):
    store = JobStore.open(f"sqlite:///{tmp_path}/db.sqlite")
    try:
        store._write_lock.acquire()  # hold the writer so the three inserts are grouped into one batch
        futures: list[Future] = []
        for text in ("ok-1", "\ud800", "ok-2"):
            futures.append(store.create_soon(generator="g", public_spec={}, secret_spec_json=f'{{"x": "{text}"}}',
                                             out_dir=f"/o/{len(futures)}", n=1))
        store._write_lock.release()
        assert futures[0].result(10).id and futures[2].result(10).id
        with pytest.raises(UnicodeEncodeError):
            futures[1].result(10)
        assert store.list()[1] == 2
    finally:
        store.dispose()


def test_the_worker_policy_refuses_paths_the_post_would_have(tree):
    """Defence in depth: a spec that reached a worker with an outside path still reads nothing."""
    rules = policy.Policy.from_settings(settings_for(tree / "root"))
    previous = policy.current()
    policy.activate(rules)
    try:
        with pytest.raises(policy.InputNotAllowed):
            load_personas(str(tree / "outside" / "secret.jsonl"))
        with pytest.raises(policy.InputNotAllowed):
            load_personas("../outside/secret.jsonl")  # relative: never a local path under a policy
        assert load_personas(str(tree / "root" / "mine.jsonl"))[0].text == "東京の小学校教師"
    finally:
        policy.activate(previous)
    assert load_personas(str(tree / "outside" / "secret.jsonl"))  # the CLI keeps its freedom


def test_which_engines_load_their_model_comes_from_the_backend(tree):
    """In-process backends (and the cluster's replicas) would download a Hub id; remote ones only
    send the name to their server. Backend.in_process decides, not a list in the policy."""
    with client_for(tree) as client:
        for engine in ("vllm", "ray-replicas"):
            r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1,
                                              "roles": {"default": {"engine": engine, "model": "org/m"}}})
            assert r.status_code == 422 and "model_download_not_allowed" in r.text, (engine, r.text)
        r = client.post("/v1/jobs", json={"generator": "persona-qa", "n": 1, "roles": {"default": {
            "engine": "openai-batch", "base_url": "http://127.0.0.1:9/v1", "model": "org/m"}}})
        assert r.status_code == 201, r.text
