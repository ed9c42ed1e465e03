"""html-render's documents and charts: every new layout through the CLI (kill and resume), chart answers checked
against the table that drew the chart, document structure checks, Debian's Japanese fonts, degradations."""

from __future__ import annotations

import asyncio
import io
import random
import re

import datasets
import orjson
import pytest
from gen_cli import kill_then_resume
from gen_responders import document_page, document_responder, span_qa
from PIL import Image

from synthgen.engine.runner import run_job
from synthgen.generators import html_render
from synthgen.generators.render import charts
from synthgen.generators.render.degrade import EFFECTS, degrade
from synthgen.loopback_server import LoopbackServer, last_user_text
from synthgen.spec import JobSpec

SENTENCES = ["市立図書館は月曜日が休館日で、平日は午後八時まで開いている。", "新しい図書館カードを作るには、住所を確認できる書類が必要だ。",
             "この町の夏祭りは八月の第一土曜日に開かれ、約三千発の花火が打ち上げられる。", "会場へは臨時のシャトルバスが十五分おきに運行される。"]


def _source(path, rows: int = 40) -> None:
    path.write_text("".join(orjson.dumps({"body": "".join(SENTENCES[(i + k) % 4] for k in range(3))}).decode() + "\n"
                            for i in range(rows)), encoding="utf-8")


def expected_answer(question: str, chart: dict) -> str:
    """What the table says, worked out here independently of charts.questions."""
    by = dict(zip(chart["labels"], chart["values"], strict=True))
    unit, d = ("％" if chart["kind"] == "pie" else chart["unit"]), chart["decimals"]

    def fmt(v: float) -> str:
        return f"{v:,.{d}f}"

    quoted = re.findall(r"「([^」]+)」", question)
    if "最も大きく増えた" in question:
        vals = chart["values"]
        rises = [vals[i + 1] - vals[i] for i in range(len(vals) - 1)]
        return chart["labels"][rises.index(max(rises)) + 1]
    if "最も大きい" in question or "一番大きい" in question:
        return max(by, key=by.get)
    if "最も小さい" in question or "一番小さい" in question:
        return min(by, key=by.get)
    if "どちらの" in question:
        return max(quoted, key=by.get)
    if "増えましたか" in question:
        return "増えた" if by[quoted[1]] > by[quoted[0]] else "減った"
    if "合わせると" in question:
        return f"{fmt(by[quoted[0]] + by[quoted[1]])}％"
    if "よりいくつ大きい" in question:
        return f"{fmt(round(by[quoted[0]] - by[quoted[1]], d))}{unit}"
    if "はいくつですか" in question:
        return f"{fmt(by[quoted[0]])}{unit}"
    raise AssertionError(f"unknown chart question {question}")


def test_new_layouts_through_the_cli_with_kill_and_resume(tmp_path):
    """The 4 document and 3 chart layouts, some pictures degraded; killed midway and resumed to exactly n."""
    src = tmp_path / "texts.jsonl"
    _source(src)
    out = tmp_path / "run"
    layouts = dict.fromkeys(html_render.DOCUMENT_LAYOUTS + html_render.CHART_LAYOUTS, 1)
    with LoopbackServer(document_responder, latency=0.05) as srv:
        args = ["run", "html-render", "--n", "14", "--base-url", srv.base_url, "--model", "M", "--out", str(out),
                "--set", f"params.source={src}", "--set", "params.column=body", "--set", "params.pool_pages=2",
                "--set", "params.layouts=" + orjson.dumps(layouts).decode(), "--set", "params.degrade_chance=0.5",
                "--set", "params.multi_chart_chance=0.3"]
        written, again = kill_then_resume(args, out, kill_after=3)
    assert 3 <= written < 14
    assert again.returncode == 0, again.stderr + again.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 14 and len(set(ds["key"])) == 14
    assert set(ds["layout"]) >= {"bar_chart", "line_chart", "pie_chart"} and set(ds["layout"]) & set(
        html_render.DOCUMENT_LAYOUTS)
    fonts = set(html_render.font_choices(list(html_render.data.load("fonts.yaml"))))
    degraded = pairs = 0
    for row in ds:
        assert row["style"]["font"] in fonts
        assert set(row["degradations"]) <= set(EFFECTS)
        degraded += bool(row["degradations"])
        msgs = row["messages"]
        assert msgs[0]["content"].startswith("<image>\n") and len(msgs) >= 2
        if row["layout"] in html_render.CHART_LAYOUTS:
            chart = row["chart"]
            assert chart["kind"] == row["layout"].removesuffix("_chart") and row["charts"][0] == chart
            # the picture's geometry draws exactly the table the answers come from
            for doc, table in zip(row["html"].split("\n<!-- 2枚目 -->\n"), row["charts"], strict=True):
                drawn = charts.read_chart(doc, table["kind"])
                assert drawn == pytest.approx(table["values"], abs=10 ** -table["decimals"] / 2)
                if table["kind"] == "pie":
                    assert sum(table["values"]) == 100
            if len(row["charts"]) == 2:
                pairs += 1
                assert row["image"] is None and len(row["images"]) == 2
                assert all(q["answer"] == expected_pair_answer(q["question"], *row["charts"]) for q in row["qa"])
            else:
                assert all(q["answer"] == expected_answer(q["question"], chart) for q in row["qa"])
            assert row["qa"]
        else:
            assert row["chart"]["kind"] == "" and row["qa"]
            if row["layout"] == "report":
                assert row["html"].count('class="page"') >= 2
            if row["layout"] == "merged_table":
                assert re.search(r"(?:rowspan|colspan)=\"?[2-9]", row["html"])
    assert degraded >= 2 and pairs >= 1


def test_documents_that_ignore_their_layout_are_dropped(tmp_path):
    src = tmp_path / "texts.jsonl"
    _source(src, rows=6)

    def lazy(body):
        prompt = last_user_text(body)
        if "完成したHTMLページ" in prompt and "セルを結合した表" in prompt:
            return document_page(prompt.replace("セルを結合した表", "普通の記事"))  # no merged cells
        if "完成したHTMLページ" in prompt:
            return document_page(prompt)
        return span_qa(prompt)

    with LoopbackServer(lazy) as srv:
        spec = JobSpec(generator="html-render", n=3, max_inputs=6, out=str(tmp_path / "out"),
                       params={"source": str(src), "column": "body", "pool_pages": 2,
                               "layouts": {"merged_table": 1, "report": 1}},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    reasons = result.manifest["failures_by_reason"]
    assert set(reasons) == {"layout_not_followed"}
    assert set(ds["layout"]) == {"report"} and reasons["layout_not_followed"] == 6 - len(ds)


def test_chart_tables_questions_and_reader_agree_for_many_seeds():
    for seed in range(60):
        rng = random.Random(seed)
        kind = charts.KINDS[seed % 3]
        table = charts.make_table(kind, rng)
        style = charts.ChartStyle(value_labels=seed % 2 == 0, horizontal=seed % 4 == 0)
        doc = charts.page(table, style, font="IPAexGothic", font_size=16,
                          palette={"text": "#222", "background": "#fff", "accent": "#c00"})
        assert charts.read_chart(doc, kind) == pytest.approx(table.values, abs=10 ** -table.decimals / 2)
        chart = {**table.as_dict(), "kind": kind}
        qa = charts.questions(table, style, rng, 10)
        assert len({q["question"] for q in qa}) == len(qa) >= 3
        assert all(expected_answer(q["question"], chart) == q["answer"] for q in qa)
        if not style.value_labels:  # exact values are asked only when the chart prints them
            assert {q["kind"] for q in qa} <= {"max", "min", "compare", "max_rise", "trend"}


def test_debian_fonts_are_found_in_every_kind():
    bank = html_render.data.load("fonts.yaml")
    for kind, families in bank.items():
        found = html_render.font_choices([kind])
        assert found != list(html_render.GENERIC_FONTS), f"no {kind} font installed (run scripts/setup.sh)"
        assert set(found) <= set(families)
    assert len(html_render.font_choices(list(bank))) >= 15


@pytest.mark.parametrize("effect", EFFECTS)
def test_each_degradation_changes_the_picture_but_not_its_size(effect):
    img = Image.new("RGB", (320, 240), "white")
    for x in range(20, 300, 40):
        img.paste((20, 20, 20), (x, 60, x + 20, 180))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = degrade(buf.getvalue(), [effect], random.Random(4), fmt="png")
    again = degrade(buf.getvalue(), [effect], random.Random(4), fmt="png")
    assert out == again  # drawn from the record's RNG: a resumed record looks the same
    with Image.open(io.BytesIO(out)) as got:
        assert got.size == (320, 240)
        diff = sum(abs(a - b) for a, b in zip(got.convert("L").tobytes(), img.convert("L").tobytes(), strict=True))
    assert diff > 320 * 240 * 0.5


def expected_pair_answer(question: str, first: dict, second: dict) -> str:
    a = dict(zip(first["labels"], first["values"], strict=True))
    b = dict(zip(second["labels"], second["values"], strict=True))
    quoted = re.findall(r"「([^」]+)」", question)
    if "どちらのグラフ" in question:
        return "1枚目" if a[quoted[0]] > b[quoted[0]] else "2枚目"
    if "差が最も大きい" in question:
        return max(a, key=lambda lab: abs(a[lab] - b[lab]))
    if question.startswith(("1枚目のグラフで", "2枚目のグラフで")):
        table = a if question.startswith("1枚目") else b
        return max(table, key=table.get)
    if "差はいくつ" in question:
        unit = "％" if first["kind"] == "pie" else first["unit"]
        return f"{abs(a[quoted[0]] - b[quoted[0]]):,.{first['decimals']}f}{unit}"
    raise AssertionError(f"unknown two-chart question {question}")


def test_two_chart_records_ask_what_needs_both_charts(tmp_path):
    src = tmp_path / "texts.jsonl"
    _source(src, rows=6)
    spec = JobSpec(generator="html-render", n=6, out=str(tmp_path / "out"),
                   params={"source": str(src), "column": "body", "pool_pages": 2, "multi_chart_chance": 1.0,
                           "layouts": dict.fromkeys(html_render.CHART_LAYOUTS, 1)},
                   roles={"default": {"base_url": "http://127.0.0.1:9/v1", "model": "unused"}})  # no model is asked
    assert asyncio.run(run_job(spec)).stats.state == "succeeded"
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(ds) == 6
    for row in ds:
        first, second = row["charts"]
        assert row["image"] is None and len(row["images"]) == 2 and first["labels"] == second["labels"]
        assert first["title"] != second["title"]
        docs = row["html"].split("\n<!-- 2枚目 -->\n")
        for doc, chart in zip(docs, (first, second), strict=True):
            assert charts.read_chart(doc, chart["kind"]) == pytest.approx(chart["values"],
                                                                          abs=10 ** -chart["decimals"] / 2)
        assert row["messages"][0]["content"].startswith("<image>\n<image>\n")
        assert row["qa"] and all(q["answer"] == expected_pair_answer(q["question"], first, second) for q in row["qa"])
