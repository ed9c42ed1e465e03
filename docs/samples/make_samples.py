"""Write docs/samples/: one record of each new kind of data, made by the real generators.

The model replies come from the tests' scripted loopback responders (tests/gen_responders.py),
so the text shows the shape of a record and what each check enforces, not a model's quality;
charts are drawn with no model at all, so their pictures and answers are exactly what a real
run writes. Run from the repository root: `python docs/samples/make_samples.py` (needs Chromium).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from gen_responders import (  # noqa: E402
    RecaptionWriter,
    caption_style_responder,
    document_responder,
    persona_qa_responder,
    preference_responder,
)
from image_responders import CAPTIONS_JA  # noqa: E402

from synthgen.engine.runner import run_job  # noqa: E402
from synthgen.generators.images.samples import draw, encode, write_folder  # noqa: E402
from synthgen.loopback_server import LoopbackServer  # noqa: E402
from synthgen.spec import JobSpec  # noqa: E402

OUT = ROOT / "docs" / "samples"


def _run(generator: str, params: dict[str, Any], responder: Any, tmp: Path, n: int = 4, **roles: Any):
    with LoopbackServer(responder) as srv:
        spec = JobSpec(generator=generator, n=n, out=str(tmp / generator), params=params, seed=7,
                       roles={"default": {"base_url": srv.base_url, "model": "M"},
                              **{k: {"base_url": srv.base_url, **v} for k, v in roles.items()}})
        asyncio.run(run_job(spec))
    return datasets.load_from_disk(str(tmp / generator))


def _save(name: str, row: dict[str, Any], image_keys: tuple[str, ...] = ("image",)) -> None:
    record = {}
    for key, value in row.items():
        if key in image_keys and value is not None:
            img = value if isinstance(value, Image.Image) else Image.open(io.BytesIO(value["bytes"]))
            img = img.convert("RGB")
            img.thumbnail((560, 560))
            img.save(OUT / f"{name}.jpg", quality=80)
            record[key] = f"{name}.jpg"
        elif key == "html":
            record[key] = value[:300] + ("…" if len(value) > 300 else "")
        else:
            record[key] = value
    text = json.dumps(record, ensure_ascii=False, indent=2) + "\n"
    text = re.sub(r"/tmp/[^/\"]+/", "", text)  # the run's temporary folder says nothing
    (OUT / f"{name}.json").write_text(text, encoding="utf-8")
    print("wrote", name)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        import pyarrow as pa
        import pyarrow.parquet as pq

        caption = CAPTIONS_JA["dense"] + "手前の皿にはパンが一つ載っている。"
        pq.write_table(pa.table({"image": [{"bytes": encode(draw(i)), "path": None} for i in range(6)],
                                 "text": [caption] * 6}), tmp / "c.parquet")
        cats = [{"name": "story", "label": "物語", "instruction": "画像の場面から始まる短い物語を書いてもらう依頼にすること。",
                 "phrasing": "request", "answer": "long", "format": "始まり・展開・結びのある物語にする。",
                 "length": "三百〜六百字"},
                {"name": "counting", "label": "数を数える", "instruction": "物の数を数える質問にすること。",
                 "answer": "short", "check": "number_first", "format": "最初に数を数字で書く。", "length": "一文以内",
                 "cues": ["数を数字で答えてください。"]}]
        ds = _run("category-recaption", {"source": str(tmp / "c.parquet"), "caption_column": "text",
                                         "categories": cats, "questions_per_image": 2, "min_turns": 2,
                                         "max_turns": 3}, RecaptionWriter(), tmp)
        _save("category_recaption_request_multiturn", next(r for r in ds if r["category"] == "story"))
        _save("category_recaption_short_answer", next(r for r in ds if r["category"] == "counting"))

        (tmp / "category-recaption").rename(tmp / "category-recaption-single")
        ds = _run("category-recaption", {"source": str(tmp / "c.parquet"), "caption_column": "text",
                                         "multi_image_chance": 1.0, "images_per_record": [2, 2]},
                  RecaptionWriter(), tmp, n=1)
        row = dict(ds[0])
        row["images"] = [f"category_recaption_multi_image_{i}.jpg" for i in range(len(row["images"]))]
        for i, img in enumerate(ds[0]["images"]):
            img.convert("RGB").save(OUT / row["images"][i], quality=80)
        _save("category_recaption_multi_image", row)

        write_folder(tmp / "imgs", 2)
        ds = _run("caption-translate", {"source": str(tmp / "imgs"), "styles": ["short", "what_next"]},
                  caption_style_responder, tmp, n=1)
        _save("caption_translate_what_next", ds[0])

        ds = _run("persona-qa", {"turns": 2}, persona_qa_responder, tmp, n=3)
        _save("persona_qa_persona", next(r for r in ds if r["task"] == "math") if "math" in ds["task"] else ds[0])
        (tmp / "persona-qa").rename(tmp / "persona-qa-persona")
        ds = _run("persona-qa", {"turns": 2, "driver": "keypoint"}, persona_qa_responder, tmp, n=1)
        _save("persona_qa_keypoint", ds[0])

        ds = _run("preference-pairs", {"contrast": "temperatures"}, preference_responder, tmp, n=1)
        _save("preference_pairs", ds[0])

        src = tmp / "texts.jsonl"
        src.write_text("".join(json.dumps({"body": "市立図書館は月曜日が休館日で、平日は午後八時まで開いている。"
                                                   "新しい図書館カードを作るには、住所を確認できる書類が必要だ。"
                                                   "会場へは臨時のシャトルバスが十五分おきに運行される。"},
                                          ensure_ascii=False) + "\n" for _ in range(20)), encoding="utf-8")
        for layout, degrade in (("bar_chart", 0.0), ("line_chart", 0.0), ("pie_chart", 0.0), ("report", 0.0),
                                ("merged_table", 1.0)):
            ds = _run("html-render", {"source": str(src), "column": "body", "layouts": {layout: 1},
                                      "degrade_chance": degrade, "pool_pages": 1}, document_responder, tmp, n=1)
            _save(f"html_render_{layout}" + ("_degraded" if degrade else ""), ds[0])
            (tmp / "html-render").rename(tmp / f"html-render-{layout}")
        ds = _run("html-render", {"source": str(src), "column": "body", "layouts": {"line_chart": 1},
                                  "multi_chart_chance": 1.0, "pool_pages": 1}, document_responder, tmp, n=1)
        row = dict(ds[0])
        row["images"] = [f"html_render_two_charts_{i}.jpg" for i in range(2)]
        for name, img in zip(row["images"], ds[0]["images"], strict=True):
            img = img.convert("RGB")
            img.thumbnail((560, 560))
            img.save(OUT / name, quality=80)
        _save("html_render_two_charts", row)


if __name__ == "__main__":
    main()
