"""category-recaption's bank: every category through the CLI (kill and resume), weights, formats, personas, turns."""

from __future__ import annotations

import asyncio
import collections
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from gen_cli import kill_then_resume
from gen_responders import CAPTION_TEXT, SHORT_ANSWERS, RecaptionWriter, request_of

from synthgen.engine.runner import run_job
from synthgen.generators.banks import difficulties, draw
from synthgen.generators.category_recaption import (
    _REQUEST,
    DEFAULT_CATEGORIES,
    DEFAULT_SHORT_CUES,
    Category,
    Dealer,
    bundled_multi_image_categories,
    generator,
)
from synthgen.generators.images.samples import draw as draw_image
from synthgen.generators.images.samples import encode
from synthgen.loopback_server import LoopbackServer, last_user_text
from synthgen.spec import JobSpec

FOOD_AND_TEXT = CAPTION_TEXT + "手前の皿にはパンが一つ載っている。"


def _parquet(path, count: int, caption: str) -> None:
    pq.write_table(pa.table({"image": [{"bytes": encode(draw_image(i)), "path": None} for i in range(count)],
                             "text": [caption] * count}), path)


def test_bank_is_a_rich_data_file():
    cats = DEFAULT_CATEGORIES
    long_form = [c for c in cats if c.answer == "long"]
    assert len(cats) >= 33 and len(long_form) >= 25
    names = {c.name for c in cats}
    assert {"guide", "story", "poem", "review", "advertisement", "lesson", "itinerary", "explanation",
            "comparison", "what_next", "counting", "ocr", "description", "creative_writing", "advice"} <= names
    # creative writing and advice are requests (依頼文); every category says how and how long to answer
    assert all(c.phrasing == "request" for c in cats if c.name in ("creative_writing", "story", "poem", "advice"))
    assert all(c.format and c.length for c in cats)
    by = {c.name: c for c in cats}
    assert by["counting"].check == "number_first" and by["ocr"].check == "verbatim"
    assert by["counting"].answer == by["ocr"].answer == "short"


def test_weights_are_followed_by_the_dealer_and_the_difficulty_draw():
    dealer = Dealer(DEFAULT_CATEGORIES, seed=5)
    n = 2000
    counts = collections.Counter(c.name for _ in range(n) for c in dealer.deal(FOOD_AND_TEXT, 1))
    total = sum(c.weight for c in DEFAULT_CATEGORIES)
    for c in DEFAULT_CATEGORIES:  # exact balance: each count is its share, within one deal
        assert abs(counts[c.name] - n * c.weight / total) <= 1, c.name
    levels = difficulties("image")
    levels[0] = levels[0].model_copy(update={"weight": 2.0})
    rng = random.Random(1)
    drawn = collections.Counter(draw(levels, rng).name for _ in range(4000))
    assert 1900 <= drawn["easy"] <= 2100 and 900 <= drawn["medium"] <= 1100 and 900 <= drawn["hard"] <= 1100


def test_every_category_through_the_cli_with_kill_and_resume(tmp_path):
    """All 37 categories once each (a categories_file with equal weights), 1-3 turns, killed and resumed."""
    _parquet(tmp_path / "c.parquet", 13, FOOD_AND_TEXT)
    bank = [{**c.model_dump(), "weight": 1.0} for c in DEFAULT_CATEGORIES]
    (tmp_path / "bank.yaml").write_text(yaml.safe_dump(bank, allow_unicode=True), encoding="utf-8")
    writer = RecaptionWriter()
    n = len(DEFAULT_CATEGORIES)
    out = tmp_path / "run"
    with LoopbackServer(writer, latency=0.01) as srv:
        args = ["run", "category-recaption", "--n", str(n), "--base-url", srv.base_url, "--model", "M",
                "--set", f"params.source={tmp_path / 'c.parquet'}", "--set", "params.caption_column=text",
                "--set", f"params.categories_file={tmp_path / 'bank.yaml'}", "--set", "params.questions_per_image=3",
                "--set", "params.min_turns=1", "--set", "params.max_turns=3", "--out", str(out)]
        written, again = kill_then_resume(args, out, kill_after=6)
    assert 6 <= written < n
    assert again.returncode == 0, again.stderr + again.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == n and len(set(ds["key"])) == n
    assert collections.Counter(ds["category"]) == dict.fromkeys((c.name for c in DEFAULT_CATEGORIES), 1)
    by = {c.name: c for c in DEFAULT_CATEGORIES}
    turn_counts = collections.Counter()
    for row in ds:
        cat = by[row["category"]]
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        turn_counts[len(msgs) // 2] += 1
        first = msgs[0]["content"]
        assert first.startswith("<image>\n") and "<image>" not in "".join(m["content"] for m in msgs[1:])
        if cat.answer == "short":  # LLaVA-1.5's cue: the short answer was asked for
            assert first.splitlines()[-1] in (cat.cues or DEFAULT_SHORT_CUES)
            assert msgs[1]["content"] == SHORT_ANSWERS[cat.name]
        else:
            assert not any(first.endswith(cue) for cue in DEFAULT_SHORT_CUES)
        if cat.phrasing == "request":
            assert first.splitlines()[1] == request_of(cat.label) and _REQUEST.search(first)
        assert row["difficulty"] in {"easy", "medium", "hard"}
        assert row["persona"] and row["persona_id"].startswith("ja-")
    assert set(turn_counts) == {1, 2, 3}
    # the answering model was told each category's format and length; questions came with who asks
    for cat in DEFAULT_CATEGORIES:
        assert any(f"- 答え方：{cat.format}" in p and f"- 長さ：{cat.length}" in p for p in writer.prompts["answer"])
    assert all("尋ねる人：" in p and "難しさ：" in p for p in writer.prompts["question"])
    # a follow-up sees the whole dialogue so far, so it builds on the earlier answers
    assert writer.prompts["followup"] and all("アシスタント：" in p for p in writer.prompts["followup"])


def test_format_checks_drop_what_the_category_forbids(tmp_path):
    """Counting must give the number first, OCR the text verbatim, requests must be requests."""
    _parquet(tmp_path / "c.parquet", 3, CAPTION_TEXT)
    base = RecaptionWriter()

    def writer(body):
        prompt = last_user_text(body)
        if "「創作」の依頼を一つ作って" in prompt:
            return "この画像はどんな物語になりますか?"  # a question, not a request
        if "利用者の質問：" in prompt and "画像の中に図形はいくつ" in prompt:
            return "図形は全部で二つあります。"
        if "利用者の質問：" in prompt and "左下に書かれている" in prompt:
            return "NO7と書かれています。"
        return base(body)

    cats = [c for c in DEFAULT_CATEGORIES if c.name in ("counting", "ocr", "creative_writing", "color")]
    with LoopbackServer(writer) as srv:
        spec = JobSpec(generator="category-recaption", n=3, max_inputs=12, out=str(tmp_path / "out"),
                       params={"source": str(tmp_path / "c.parquet"), "caption_column": "text", "personas": None,
                               "categories": [c.model_dump() for c in cats], "questions_per_image": 4},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.manifest["failures_by_reason"] == {"count_not_first": 3, "text_not_verbatim": 3,
                                                     "not_a_request": 3}
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds["category"] == ["color"] * 3 and ds["persona"] == [""] * 3


def test_bad_banks_are_clear_errors(tmp_path):
    from pydantic import ValidationError

    cat = {"name": "a", "label": "A", "instruction": "-"}
    (tmp_path / "bad.yaml").write_text("- {name: a, label: A, instruction: '-', answer: medium}\n", encoding="utf-8")
    for bad, message in (({"categories_file": str(tmp_path / "bad.yaml")}, "answer"),
                         ({"categories": [{**cat, "check": "exact"}]}, "check"),
                         ({"min_turns": 3, "max_turns": 2}, "min_turns"),
                         ({"max_turns": 5}, "max_turns"),
                         ({"categories_file": str(tmp_path)}, "cannot read bank file"),
                         ({"images_per_record": [1, 2]}, "images_per_record")):
        with pytest.raises(ValidationError, match=message):
            generator.parse_params({"source": str(tmp_path), **bad})
    assert Category.model_validate(cat).phrasing == "question"


def test_multi_image_records_hold_2_to_4_images_and_a_question_needing_them(tmp_path):
    """Through the CLI, killed midway and resumed: the grouping is seeded, so resume finds the same groups."""
    _parquet(tmp_path / "c.parquet", 40, CAPTION_TEXT)
    writer = RecaptionWriter()
    out = tmp_path / "out"
    with LoopbackServer(writer, latency=0.02) as srv:
        args = ["run", "category-recaption", "--n", "12", "--base-url", srv.base_url, "--model", "M", "--out", str(out),
                "--set", f"params.source={tmp_path / 'c.parquet'}", "--set", "params.caption_column=text",
                "--set", "params.questions_per_image=1", "--set", "params.multi_image_chance=0.6",
                "--set", "params.images_per_record=[2,4]"]
        written, again = kill_then_resume(args, out, kill_after=3)
    assert 3 <= written < 12
    assert again.returncode == 0, again.stderr + again.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 12 and len(set(ds["key"])) == 12
    multi = [r for r in ds if r["images"]]
    single = [r for r in ds if not r["images"]]
    assert multi and single
    names = {c.name for c in bundled_multi_image_categories()}
    for row in multi:
        k = len(row["images"])
        assert 2 <= k <= 4 and row["image"] is None and len(set(row["images_sha256"])) == k
        first = row["messages"][0]["content"]
        assert first.startswith("<image>\n" * k) and first.count("<image>") == k
        assert row["category"] in names and row["caption"].startswith("画像1：")
        if row["category"] == "count_across":
            assert first.endswith("合計の数を数字で答えてください。")
    for row in single:
        assert row["image"] is not None and row["messages"][0]["content"].count("<image>") == 1
    # the writer saw every image of the group, numbered
    asked = [p for p in writer.prompts["question"] if "枚の画像に写っているもの" in p]
    assert asked and all("1枚目：" in p and "2枚目：" in p for p in asked)
