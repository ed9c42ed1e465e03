"""The bundled Japanese persona set and the persona loaders (files and, faked, the Hub)."""

from __future__ import annotations

import json
import re
from collections import Counter

import polars as pl
import pytest

from synthgen.personas import Persona, build, load_personas
from synthgen.personas.loaders import builtin_path, iter_personas

KANA = re.compile(r"[\u3040-\u30ff]")
JSOC_GROUPS = {
    "管理的職業従事者", "専門的・技術的職業従事者", "事務従事者", "販売従事者", "サービス職業従事者",
    "保安職業従事者", "農林漁業従事者", "生産工程従事者", "輸送・機械運転従事者", "建設・採掘従事者",
    "運搬・清掃・包装等従事者",
}


# --- the bundled set -------------------------------------------------------------------------


def test_occupation_list_is_large_unique_and_covers_every_major_group():
    occupations = build.load_occupations()
    assert len(occupations) >= 350
    assert len({o["occupation"] for o in occupations}) == len(occupations)
    counts = Counter(o["category"] for o in occupations)
    assert set(counts) == JSOC_GROUPS
    assert all(KANA.search(o["description"]) for o in occupations)


def test_bundled_set_is_large_unique_and_japanese():
    personas = load_personas()
    assert len(personas) >= 1200
    assert len({p.text for p in personas}) == len(personas) >= 1000
    assert len({p.id for p in personas}) == len(personas)
    assert all(KANA.search(p.text) and p.text.endswith("。") for p in personas)
    assert all(p.meta["region"] in p.text and p.meta["occupation"] in p.text for p in personas)
    assert builtin_path().stat().st_size < 1_000_000
    assert load_personas("builtin", limit=5) == personas[:5]


def test_personas_respect_the_plausibility_tables():
    for p in load_personas():
        if p.meta["occupation"] in build.SEA_OCCUPATIONS:
            assert p.meta["region"] not in build.LANDLOCKED
        if p.meta["category"] == "管理的職業従事者":
            assert p.meta["age_band"] != "20代"
        assert 1 <= len(p.meta["interests"]) <= 2
        assert set(p.meta["interests"]) <= set(build.INTERESTS)


def test_rebuild_reproduces_the_committed_file(tmp_path):
    rebuilt = build.write(tmp_path / "personas.jsonl")
    assert rebuilt.read_bytes() == builtin_path().read_bytes()
    assert build.main(["--check"]) == 0


def test_ids_do_not_depend_on_other_occupations(monkeypatch):
    """Dropping an occupation must leave the others' personas (and so record keys) untouched."""
    full = build.build()
    occupations = build.load_occupations()
    monkeypatch.setattr(build, "load_occupations", lambda: occupations[1:])
    dropped = occupations[0]["occupation"]
    assert build.build() == [row for row in full if row["occupation"] != dropped]


# --- local files -----------------------------------------------------------------------------


def test_persona_hub_style_jsonl_skips_empty_rows_and_hashes_ids(tmp_path):
    path = tmp_path / "hub.jsonl"
    rows = [{"input persona": "A marine biologist"}, {"input persona": "  "}, {"input persona": None},
            {"input persona": "港で働く潜水士"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    got = load_personas(str(path))
    assert [p.text for p in got] == ["A marine biologist", "港で働く潜水士"]
    assert got == load_personas(str(path))  # ids are stable
    assert len({p.id for p in got}) == 2 and all(re.fullmatch(r"[0-9a-f]{16}", p.id) for p in got)


def test_finepersonas_style_parquet_keeps_ids_and_labels(tmp_path):
    path = tmp_path / "fine.parquet"
    pl.DataFrame({
        "id": ["<urn:uuid:1>", "<urn:uuid:2>", "<urn:uuid:3>"],
        "persona": ["A network engineer", "", "A baker"],
        "labels": ['["Technology", "Networking"]', None, "[]"],
    }).write_parquet(path)
    got = load_personas(str(path))
    assert [(p.id, p.text) for p in got] == [("<urn:uuid:1>", "A network engineer"), ("<urn:uuid:3>", "A baker")]
    assert got[0].meta == {"labels": ["Technology", "Networking"]}
    assert got[1].meta == {"labels": []}


def test_csv_and_json_sources_and_explicit_column(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("persona_id,who,persona\n007,潜水士,ignored\n008,,also ignored\n009,測量士,x\n", encoding="utf-8")
    got = load_personas(str(csv), column="who")
    assert [(p.id, p.text) for p in got] == [("007", "潜水士"), ("009", "測量士")]
    assert got[0].meta == {"persona": "ignored"}
    assert [p.text for p in load_personas(str(csv))] == ["ignored", "also ignored", "x"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps([{"text": "A chef"}, {"text": "A diver"}]), encoding="utf-8")
    assert [p.text for p in load_personas(str(js))] == ["A chef", "A diver"]


def test_missing_column_names_the_available_ones(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"bio": "A pilot", "name": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no persona column among \['bio', 'name'\]"):
        load_personas(str(path))
    with pytest.raises(ValueError, match=r"column 'who' not found; available columns: \['bio', 'name'\]"):
        load_personas(str(path), column="who")
    assert [p.text for p in load_personas(str(path), column="bio")] == ["A pilot"]


def test_limit(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"persona": f"persona {i}"}) + "\n" for i in range(10)), encoding="utf-8")
    assert [p.text for p in load_personas(str(path), limit=3)] == ["persona 0", "persona 1", "persona 2"]
    assert load_personas(str(path), limit=0) == []
    assert len(load_personas(str(path), limit=100)) == 10
    assert len(load_personas(limit=7)) == 7
    with pytest.raises(ValueError, match="limit"):
        load_personas(str(path), limit=-1)


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_personas(str(tmp_path / "missing.parquet"))
    with pytest.raises(ValueError, match="not found"):
        load_personas("no hub id here")
    other = tmp_path / "p.txt"
    other.write_text("A teacher\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported persona file type"):
        load_personas(str(other))


def test_persona_is_frozen_and_compares_without_meta():
    p = Persona("a", "text", {"x": 1})
    with pytest.raises(AttributeError):
        p.text = "other"  # type: ignore[misc]
    assert p == Persona("a", "text") and hash(p) == hash(Persona("a", "text"))


# --- the Hub (faked: tests never reach a public host) ----------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls: list[tuple[tuple, dict]] = []
    pulled: list[int] = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))

        def stream():
            for i, row in enumerate([{"id": "a", "persona": "A teacher", "labels": '["Education"]'},
                                     {"id": "b", "persona": ""},
                                     {"id": "c", "persona": "A nurse"},
                                     {"id": "d", "persona": "A farmer"}]):
                pulled.append(i)
                yield row

        return stream()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls, pulled


def test_hub_dataset_is_streamed_from_the_train_split(fake_hub):
    calls, pulled = fake_hub
    got = load_personas("argilla/FinePersonas-v0.1", limit=2)
    assert calls == [(("argilla/FinePersonas-v0.1", None), {"split": "train", "streaming": True})]
    assert [(p.id, p.text) for p in got] == [("a", "A teacher"), ("c", "A nurse")]
    assert got[0].meta == {"labels": ["Education"]}
    assert pulled == [0, 1, 2]  # the stream is read only as far as the limit needs


def test_hub_config_after_the_colon(fake_hub):
    calls, _ = fake_hub
    assert len(load_personas("proj-persona/PersonaHub:persona")) == 3
    assert calls == [(("proj-persona/PersonaHub", "persona"), {"split": "train", "streaming": True})]


def test_iter_personas_is_lazy(fake_hub):
    calls, _ = fake_hub
    it = iter_personas("proj-persona/PersonaHub:persona")
    assert calls == []
    assert next(it).text == "A teacher"
    assert len(calls) == 1
