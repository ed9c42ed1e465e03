"""Records per second of the new kinds of data (issue 18), through the engine, no model cost.

(a) html-render chart records: table -> SVG -> sandboxed Chromium pool -> Q&A; no model is
    called at all, so this is the renderer's own rate for charts.
(b) category-recaption with the full 37-category bank, personas and 1-3 turns against a
    loopback writer with a fixed latency: what the extra turns and checks cost per record.
(c) preference-pairs (question, two answers at once, judge) against the same loopback.
The last line is a JSON object with each figure.

    python bench/gen_breadth.py [--charts 60] [--recaption 120] [--pairs 120] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _timed(spec) -> tuple[float, int]:
    from synthgen.engine.runner import run_job

    start = time.perf_counter()
    result = asyncio.run(run_job(spec))
    return time.perf_counter() - start, result.stats.records


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from gen_responders import CAPTION_TEXT, RecaptionWriter, preference_responder

    from synthgen.generators.images.samples import draw, encode
    from synthgen.loopback_server import LoopbackServer
    from synthgen.spec import JobSpec

    ap = argparse.ArgumentParser()
    ap.add_argument("--charts", type=int, default=60)
    ap.add_argument("--recaption", type=int, default=120)
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        src = tmp / "texts.jsonl"
        src.write_text("".join(json.dumps({"body": "市立図書館は月曜日が休館日で、平日は午後八時まで開いている。" * 3},
                                          ensure_ascii=False) + "\n" for _ in range(args.charts * 2)), encoding="utf-8")
        spec = JobSpec(generator="html-render", n=args.charts, out=str(tmp / "charts"), concurrency=8,
                       params={"source": str(src), "column": "body", "pool_pages": 4,
                               "layouts": {"bar_chart": 1, "line_chart": 1, "pie_chart": 1}},
                       roles={"default": {"base_url": "http://127.0.0.1:9/v1", "model": "unused"}})
        took, n = _timed(spec)
        out["chart_records_per_s"] = round(n / took, 2)

        pq.write_table(pa.table({"image": [{"bytes": encode(draw(i)), "path": None} for i in range(args.recaption)],
                                 "text": [CAPTION_TEXT] * args.recaption}), tmp / "c.parquet")
        with LoopbackServer(RecaptionWriter(), latency=args.latency) as srv:
            spec = JobSpec(generator="category-recaption", n=args.recaption, out=str(tmp / "recap"), concurrency=32,
                           params={"source": str(tmp / "c.parquet"), "caption_column": "text",
                                   "questions_per_image": 1, "min_turns": 1, "max_turns": 3},
                           roles={"default": {"base_url": srv.base_url, "model": "M"}})
            took, n = _timed(spec)
            out["recaption_records_per_s"] = round(n / took, 2)
        with LoopbackServer(preference_responder, latency=args.latency) as srv:
            spec = JobSpec(generator="preference-pairs", n=args.pairs, out=str(tmp / "pairs"), concurrency=32,
                           params={}, roles={"default": {"base_url": srv.base_url, "model": "M"}})
            took, n = _timed(spec)
            out["pairs_records_per_s"] = round(n / took, 2)
    out["loopback_latency_s"] = args.latency
    print(json.dumps(out))


if __name__ == "__main__":
    main()
