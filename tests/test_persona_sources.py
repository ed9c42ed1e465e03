import json

import polars as pl
import pytest

from synthgen.generators.textcheck import is_japanese
from synthgen.personas import build
from synthgen.personas.loaders import load_personas


def test_builtin_set_is_large_unique_japanese_and_reproducible(tmp_path):
    personas = load_personas()
    assert len(personas) >= 1000
    assert len({p.text for p in personas}) == len(personas) == len({p.id for p in personas})
    assert all(is_japanese(p.text) for p in personas)
    rebuilt = build.write(tmp_path / "p.jsonl")
    from synthgen.personas.loaders import builtin_path

    assert rebuilt.read_bytes() == builtin_path().read_bytes()


def test_local_files_in_persona_hub_and_finepersonas_styles(tmp_path):
    hub = tmp_path / "hub.jsonl"
    hub.write_text("\n".join(json.dumps({"input persona": t}) for t in ["A chemist", "", "A diver"]))
    assert [p.text for p in load_personas(str(hub))] == ["A chemist", "A diver"]
    fine = tmp_path / "fine.parquet"
    pl.DataFrame({"id": ["a", "b"], "persona": ["A network engineer", "A baker"], "labels": ["x", "y"]}).write_parquet(fine)
    got = load_personas(str(fine), limit=1)
    assert [(p.id, p.text) for p in got] == [("a", "A network engineer")] and got[0].meta == {"labels": "x"}
    csv = tmp_path / "c.csv"
    csv.write_text("who\n潜水士\n")
    assert load_personas(str(csv), column="who")[0].text == "潜水士"
    with pytest.raises(ValueError, match="no persona column"):
        load_personas(str(csv))
    with pytest.raises(ValueError, match="not found"):
        load_personas(str(tmp_path / "missing.jsonl"))


def test_hub_source_streams_the_named_config(monkeypatch):
    import datasets

    seen = {}

    def fake_load(repo, config, split, streaming):
        seen.update(repo=repo, config=config, split=split, streaming=streaming)
        return iter([{"persona": "A teacher"}, {"persona": "A nurse"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    got = load_personas("proj-persona/PersonaHub:persona", limit=1)
    assert seen == {"repo": "proj-persona/PersonaHub", "config": "persona", "split": "train", "streaming": True}
    assert [p.text for p in got] == ["A teacher"]
