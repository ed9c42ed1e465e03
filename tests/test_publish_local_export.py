"""Local publish (Hub layout that load_dataset opens) and the trainer exports, loaded back."""

from __future__ import annotations

import json

import datasets
import pytest
from huggingface_hub import DatasetCard
from publish_runs import image_run, plain_rows, text_run

from synthgen.engine.runs import open_run
from synthgen.publish.card import validate_card
from synthgen.publish.export import export
from synthgen.publish.local import publish_local
from synthgen.trainer.config import SourceConfig
from synthgen.trainer.sources import Source


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return image_run(tmp, 5), text_run(tmp, 3)


def test_local_publish_loads_row_for_row(runs, tmp_path):
    cap, pqa = runs
    out = tmp_path / "pub"
    result = publish_local(cap, out, row_group=2, max_shard_bytes=1)
    assert (result.config, result.rows, result.shards) == ("caption-translate", 5, 3)
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c"))  # a single config: no name needed
    assert plain_rows(loaded) == plain_rows(open_run(cap).dataset())
    assert loaded.features["image"] == datasets.Image()
    publish_local(pqa, out)  # a second generator becomes a second config of the same folder
    assert plain_rows(datasets.load_dataset(str(out), "persona-qa", split="train", cache_dir=str(tmp_path / "c"))) == \
        plain_rows(open_run(pqa).dataset())
    assert plain_rows(datasets.load_dataset(str(out), "caption-translate", split="train",
                                         cache_dir=str(tmp_path / "c"))) == \
        plain_rows(open_run(cap).dataset())
    card = DatasetCard((out / "README.md").read_text(encoding="utf-8"))
    validate_card(str(card))
    assert [c["config_name"] for c in card.data.to_dict()["configs"]] == ["caption-translate", "persona-qa"]
    assert not list(out.glob(".staging-*"))


def test_llava_and_llava_jp_exports(runs, tmp_path):
    cap, _ = runs
    rows = open_run(cap).dataset().cast_column("image", datasets.Image(decode=False))
    for fmt, user, assistant in (("llava", "human", "gpt"), ("llava-jp", "ユーザー", "システム")):
        out = tmp_path / fmt
        result = export(cap, fmt, out)
        data = json.loads((out / "data.json").read_text(encoding="utf-8"))
        assert result.rows == result.images == len(data) == 5
        for entry, row in zip(data, rows, strict=True):
            assert (out / "images" / entry["image"]).read_bytes() == row["image"]["bytes"]
            conv = entry["conversations"]
            assert [t["from"] for t in conv] == [user, assistant] * (len(conv) // 2)
            assert conv[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in conv) == 1
            assert [t["value"].removeprefix("<image>\n") for t in conv] == [
                m["content"].replace("<image>\n", "") for m in row["messages"]]
    # LLaVA-JP's preprocess_v1 looks speakers up in {"ユーザー", "システム"}: its export reads, LLaVA's does not.
    llava_jp_roles = {"ユーザー": "USER", "システム": "ASSISTANT"}
    jp = json.loads((tmp_path / "llava-jp" / "data.json").read_text(encoding="utf-8"))
    assert {llava_jp_roles[t["from"]] for e in jp for t in e["conversations"]} == {"USER", "ASSISTANT"}
    plain = json.loads((tmp_path / "llava" / "data.json").read_text(encoding="utf-8"))
    with pytest.raises(KeyError):
        [llava_jp_roles[t["from"]] for e in plain for t in e["conversations"]]
    # Our own trainer reads the LLaVA export (its llava_json loader) back to the same messages.
    src = Source(SourceConfig(path=str(tmp_path / "llava" / "data.json")))
    assert len(src) == 5 and all(src.image_flags())
    assert next(iter(src.messages()))[1]["role"] == "assistant"


def test_trl_export_parts_match_images(runs, tmp_path):
    cap, pqa = runs
    result = export(cap, "trl", tmp_path / "trl")
    ds = datasets.load_dataset(str(tmp_path / "trl"), split="train", cache_dir=str(tmp_path / "c"))
    assert result.rows == len(ds) == 5 and result.images == 5
    for row in ds:
        parts = [p for m in row["messages"] for p in m["content"]]
        assert sum(p["type"] == "image" for p in parts) == len(row["images"]) == 1
        assert row["messages"][0]["content"][0] == {"type": "image", "text": None}
        assert all("<image>" not in (p["text"] or "") for p in parts)
        assert row["images"][0].size[0] > 0
    text = export(pqa, "trl", tmp_path / "trl-text")
    ds = datasets.load_dataset(str(tmp_path / "trl-text"), split="train", cache_dir=str(tmp_path / "c"))
    assert text.images == 0 and "images" not in ds.column_names and len(ds) == 3
    assert isinstance(ds[0]["messages"][0]["content"], str)


def test_text_only_llava_export_has_no_images(runs, tmp_path):
    _, pqa = runs
    export(pqa, "llava-jp", tmp_path / "t")
    data = json.loads((tmp_path / "t" / "data.json").read_text(encoding="utf-8"))
    assert len(data) == 3 and all("image" not in e for e in data) and not (tmp_path / "t" / "images").exists()
    assert all("<image>" not in t["value"] for e in data for t in e["conversations"])
    with pytest.raises(FileExistsError):
        export(pqa, "llava-jp", tmp_path / "t")
