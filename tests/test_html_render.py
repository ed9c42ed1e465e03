"""html-render end to end through the real CLI (loopback OpenAI server, real Chromium), and its parts."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import datasets
import orjson
import pytest
from pydantic import ValidationError

from synthgen.generators import html_render
from synthgen.generators.text_sources import iter_passages, passages
from synthgen.loopback_server import LoopbackServer, Reply, last_user_text

CLI = [sys.executable, "-m", "synthgen.service.cli"]
SENTENCES = [
    "駅前の小さなラーメン店「麺処たなか」は、毎朝六時から豚骨を煮込んでいる。",
    "店主の田中さんは福岡の出身で、細麺と濃いスープにこだわっている。",
    "人気の品は味噌バターラーメンで、一杯九百五十円である。",
    "北海道の旭川市では、冬になると気温が氷点下二十度を下回る日もある。",
    "市立図書館は月曜日が休館日で、平日は午後八時まで開いている。",
    "新しい図書館カードを作るには、住所を確認できる書類が必要だ。",
    "京都の清水寺は、七七八年に創建されたと伝えられている。",
    "本堂の舞台からは、春には桜、秋には紅葉が見渡せる。",
    "この町の夏祭りは八月の第一土曜日に開かれ、約三千発の花火が打ち上げられる。",
    "会場へは臨時のシャトルバスが十五分おきに運行される。",
    "緑茶には、カテキンと呼ばれる成分が多く含まれている。",
    "静岡県は日本で最も茶の栽培面積が広い県の一つである。",
]


def _write_source(path, rows=40):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            picked = [SENTENCES[(i * 5 + k) % len(SENTENCES)] for k in range(4)]
            f.write(orjson.dumps({"id": i, "body": "".join(picked)}).decode() + "\n")


def _passage_of(prompt: str) -> str:
    return re.search(r"# (?:表示する)?文章\n(.*?)\n\n# ", prompt, re.DOTALL).group(1)


def page_for(prompt: str, *, hostile: str = "") -> str:
    passage = _passage_of(prompt)
    width = re.search(r"幅(\d+)px", prompt).group(1)
    vertical = "writing-mode: vertical-rl" in prompt
    body_style = "writing-mode: vertical-rl; height: 480px;" if vertical else ""
    paras = "".join(f"<p>{s}</p>" for s in passage.split("\n"))
    return ("```html\n<!DOCTYPE html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>ページ</title>"
            f"<style>body {{ background: #fdf6e3; color: #222; font-size: 20px; max-width: {width}px; }}"
            " h1 { color: #c0392b; }</style><script>while(true){}</script></head>"
            f"<body><h1>お知らせ</h1><div style=\"{body_style}\">{paras}</div>{hostile}</body></html>\n```")


def qa_for(prompt: str) -> str:
    passage = _passage_of(prompt)
    first = passage.split("。")[0]
    return orjson.dumps([
        {"question": "最初の文の冒頭は何ですか。", "answer": first[:8]},
        {"question": "文章に書かれていないことは？", "answer": "火星の首都"},  # dropped: not in the passage
        {"question": "二つ目の文の冒頭は？", "answer": passage.split("。")[1][:6] if "。" in passage[:-1] else first[:4]},
    ]).decode()


def responder(body):
    prompt = last_user_text(body)
    if "完成したHTMLページ" in prompt:
        return page_for(prompt)
    if "質問と答え" in prompt:
        return qa_for(prompt)
    return Reply(status=400)


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_run_writes_rendered_dataset(tmp_path):
    src = tmp_path / "texts.jsonl"
    _write_source(src)
    out = tmp_path / "run"
    with LoopbackServer(responder) as srv:
        proc = _run("run", "html-render", "--n", "16", "--base-url", srv.base_url, "--model", "M",
                    "--out", str(out), "--set", f"params.source={src}", "--set", "params.column=body",
                    "--set", "params.pool_pages=3", "--set", "params.passage_chars=120",
                    "--set", "params.layouts=" + orjson.dumps(dict.fromkeys(html_render.TEXT_LAYOUTS, 1)).decode())
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 16 and len(set(ds["key"])) == 16
    layouts = set(ds["layout"])
    assert len(layouts) >= 4 and layouts <= set(html_render.TEXT_LAYOUTS)
    for row in ds:
        image = row["image"]
        assert image.width >= 480 and image.height >= 480
        assert "<script" not in row["html"] and "Content-Security-Policy" in row["html"]
        assert "ページ" not in row["visible_text"]  # <title> is not page text
        assert row["visible_text"].startswith("お知らせ")
        assert html_render.normalize(row["source_text"]) in html_render.normalize(row["visible_text"])
        answers = [q["answer"] for q in row["qa"]]
        assert answers and "火星の首都" not in answers
        msgs = row["messages"]
        assert msgs[0]["role"] == "user" and msgs[0]["content"].startswith("<image>\n")
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(answers) + 1)
        assert row["visible_text"] in [m["content"] for m in msgs if m["role"] == "assistant"]
    man = orjson.loads((out / "manifest.json").read_bytes())
    assert set(man["prompt_templates"]) == {"page", "qa", "read_all"}


def test_bad_pages_are_dropped_with_reasons(tmp_path):
    src = tmp_path / "texts.jsonl"
    _write_source(src, rows=12)
    calls = {"n": 0}

    def messy(body):
        prompt = last_user_text(body)
        if "完成したHTMLページ" in prompt:
            calls["n"] += 1
            kind = calls["n"]  # the first five pages are bad, one way each; the rest are fine
            if kind == 1:
                return "すみません、HTMLは書けません。"
            if kind == 2:  # the passage is left out, so its answers are not visible either
                return "```html\n<h1>お知らせ</h1><p>本日は休業いたします。またのご来店をお待ちしております。</p>\n```"
            if kind == 3:
                return Reply(text=page_for(prompt)[:200], finish_reason="length")
            if kind == 4:  # a character no installed font has: drawn as tofu
                return page_for(prompt, hostile="<p>ꀀꀁꀂ</p>")
            if kind == 5:
                return "```html\n<script>document.write('x')</script><img src='http://127.0.0.1:9/a.png'>\n```"
        if "質問と答え" in prompt:
            return qa_for(prompt)
        # Good pages come late, so the bad ones are judged before the target of 2 is met
        # (records still in flight then are cancelled, not counted).
        return Reply(text=page_for(prompt), hang=3.0)

    out = tmp_path / "r"
    config = tmp_path / "job.yaml"  # the same params through --config
    config.write_text(f"params:\n  source: {src}\n  column: body\n  pool_pages: 2\n  layouts: {{article: 1, vertical: 1}}\n",
                      encoding="utf-8")
    with LoopbackServer(messy) as srv:
        proc = _run("run", "html-render", "--n", "2", "--base-url", srv.base_url, "--model", "M",
                    "--out", str(out), "--config", str(config), "--max-inputs", "40", "--concurrency", "4")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    failures = [orjson.loads(x) for x in (out / "failures.jsonl").read_bytes().splitlines()]
    reasons = {f["reason"] for f in failures}
    assert reasons == {"no_html", "truncated_html", "passage_not_shown", "tofu", "unsafe_html"}, reasons
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 2 and set(ds["layout"]) <= {"article", "vertical"}


def test_config_errors_are_clear(tmp_path):
    proc = _run("run", "html-render", "--base-url", "http://127.0.0.1:9/v1", "--model", "M", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "source" in proc.stderr and "Traceback" not in proc.stderr
    src = tmp_path / "texts.jsonl"
    _write_source(src, rows=2)
    proc = _run("run", "html-render", "--base-url", "http://127.0.0.1:9/v1", "--model", "M", "--out", str(tmp_path / "z"),
                "--set", f"params.source={src}", "--set", "params.column=body", "--set", "params.chromium=/nonexistent/chromium")
    assert proc.returncode == 2 and "Chromium not found" in proc.stderr and "Traceback" not in proc.stderr
    gen = html_render.generator
    with pytest.raises(ValidationError, match="comic"):
        gen.parse_params({"source": "x.jsonl", "layouts": {"poster": 1, "comic": 2}})
    with pytest.raises(ValidationError, match="passage_chars"):
        gen.parse_params({"source": "x.jsonl", "passage_chars": 500, "max_passage_chars": 300})
    with pytest.raises(ValidationError, match="tunrs"):
        gen.parse_params({"source": "x.jsonl", "tunrs": 3})
    with pytest.raises(FileNotFoundError, match="neither a file"):
        list(iter_passages(str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "t.docx").write_text("x")
        list(iter_passages(str(tmp_path / "t.docx")))


def test_passages_follow_sentences(tmp_path):
    text = "".join(SENTENCES)
    parts = list(passages(text, target_chars=60, max_chars=120))
    assert "".join(parts).replace("\n", "") == text
    assert all(len(p) <= 120 for p in parts) and all(p.endswith("。") for p in parts)
    assert list(passages("あ" * 250, target_chars=60, max_chars=100)) == ["あ" * 100, "あ" * 100, "あ" * 50]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "txt", "folder"])
def test_text_sources_stream_local_files(tmp_path, suffix):
    rows = [{"body": "".join(SENTENCES[i:i + 3]), "n": i} for i in range(6)]
    if suffix == "jsonl":
        src = tmp_path / "t.jsonl"
        src.write_text("\n".join(orjson.dumps(r).decode() for r in rows), encoding="utf-8")
    elif suffix == "parquet":
        src = tmp_path / "t.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(src))
    elif suffix == "txt":
        src = tmp_path / "t.txt"
        src.write_text("\n".join(r["body"] for r in rows), encoding="utf-8")
    else:  # a folder of data files: the same `load_dataset(id_or_folder, streaming=True)` path as a Hub id
        src = tmp_path / "hubcopy"
        (src / "data").mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(src / "data" / "train-00000-of-00001.parquet"))
    column = "text" if suffix == "txt" else "body"
    got = list(iter_passages(str(src), column=column, target_chars=50, min_chars=10, max_chars=200, max_rows=4))
    assert got and {g["row"] for g in got} == {0, 1, 2, 3}
    assert all(g["passage"] in "".join(SENTENCES) + "".join(SENTENCES) or "\n" in g["passage"] for g in got)
    with pytest.raises(ValueError, match="no column"):
        list(iter_passages(str(src), column="missing"))


def test_qa_must_be_a_visible_span_of_the_passage():
    passage = "人気の品は味噌バターラーメンで、一杯九百五十円である。"
    visible = "お品書き\n人気の品は 味噌バター\nラーメンで、一杯九百五十円である。"  # split across lines
    pairs = [{"question": "人気の品は？", "answer": "味噌バターラーメン"},
             {"question": "値段は？", "answer": "九百五十円"},
             {"question": "店名は？", "answer": "お品書き"},  # visible, but not from the passage
             {"question": "辛さは？", "answer": "激辛"},
             {"question": "味噌バターラーメンの値段は？", "answer": "味噌バターラーメン"}]
    kept = html_render.visible_pairs(pairs, passage, visible)
    assert [p["answer"] for p in kept] == ["味噌バターラーメン", "九百五十円"]
    assert html_render.visible_pairs(pairs[:2], passage, "お品書き\n人気の品は") == []


def test_reply_parsing():
    assert html_render.extract_html("はい。\n```html\n<p>a</p>\n```\n以上") == "<p>a</p>"
    assert html_render.extract_html("<!DOCTYPE html><html><p>x</p></html> end").endswith("</html>")
    assert html_render.extract_html("HTMLは書けません") == ""
    assert html_render.parse_qa('```json\n[{"question": "Q", "answer": "A"}, {"q": 1}]\n```') == [
        {"question": "Q", "answer": "A"}]
    assert html_render.parse_qa("[broken") == []
    assert html_render.clean_visible("a\t b \n\n\n c \n") == "a  b\n\nc"
