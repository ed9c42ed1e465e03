"""Tiny local copies of the evaluation tasks' Hub formats, with generated images, for the evaluator tests
and bench/eval.py; plus loopback responders for a VLM under test and a judge."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, ImageDraw

from synthgen.loopback_server import Reply, last_user_text

COLOURS = {"赤": (220, 30, 30), "青": (30, 60, 220), "緑": (30, 170, 60)}


def picture(colour: str, size: int = 32) -> Image.Image:
    img = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(img).ellipse([4, 4, size - 4, size - 4], fill=COLOURS[colour])
    return img


def png(colour: str, size: int = 32) -> bytes:
    buf = io.BytesIO()
    picture(colour, size).save(buf, format="PNG")
    return buf.getvalue()


def _image(colour: str) -> dict[str, Any]:
    return {"bytes": png(colour), "path": None}


def _parquet(rows: dict[str, list], features: datasets.Features, out: Path, split: str) -> Path:
    (out / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


def colour_of(i: int) -> str:
    return list(COLOURS)[i % len(COLOURS)]


def heron(out: Path, n: int = 6) -> Path:
    """Silviase/Japanese-Heron-Bench's parquet layout (what llm-jp-eval-mm loads)."""
    cats = ["conv", "detail", "complex"]
    rows: dict[str, list] = {"image": [], "text": [], "question_id": [], "category": [], "context": [], "answer": []}
    for i in range(n):
        c = colour_of(i)
        rows["image"].append(_image(c))
        rows["text"].append(f"この図形は何色ですか？（{i}）")
        rows["question_id"].append(i)
        rows["category"].append(cats[i % 3])
        rows["context"].append(f"灰色の背景に{c}い丸が一つ描かれている。")
        rows["answer"].append({"gpt-4-0125-preview": f"{c}色の丸です。"})
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "question_id": datasets.Value("int64"), "category": datasets.Value("string"),
                                  "context": datasets.Value("string"),
                                  "answer": {"gpt-4-0125-preview": datasets.Value("string")}})
    return _parquet(rows, features, out, "train")


def heron_raw(out: Path, n: int = 3) -> Path:
    """turing-motors/Japanese-Heron-Bench's raw snapshot layout."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    qs, ans, ctx = [], [], []
    for i in range(n):
        c = colour_of(i)
        name = f"{i + 1:03d}.png"
        (out / "images" / name).write_bytes(png(c))
        qs.append({"question_id": i, "image": name, "category": ["conv", "detail", "complex"][i % 3],
                   "image_category": "art", "text": f"この図形は何色ですか？（{i}）"})
        ans.append({"question_id": i, "text": f"{c}色の丸です。"})
        ctx.append({"image": name, "caption": f"灰色の背景に{c}い丸が一つ描かれている。"})
    for fname, rows in (("questions_ja.jsonl", qs), ("answers_gpt4.jsonl", ans), ("context_ja.jsonl", ctx)):
        (out / fname).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return out


def vg_vqa(out: Path, images: int = 3, per_image: int = 2) -> Path:
    """SakanaAI/JA-VG-VQA-500: one row per image, `qas` a list of {qa_id, question, answer}."""
    rows: dict[str, list] = {"image_id": [], "image": [], "qas": []}
    for i in range(images):
        c = colour_of(i)
        rows["image_id"].append(100 + i)
        rows["image"].append(_image(c))
        rows["qas"].append([{"qa_id": 1000 + i * 10 + k, "question": f"丸は何色ですか？（{k}）", "answer": f"{c}"}
                            for k in range(per_image)])
    features = datasets.Features({"image_id": datasets.Value("int64"), "image": datasets.Image(),
                                  "qas": [{"qa_id": datasets.Value("int64"), "question": datasets.Value("string"),
                                           "answer": datasets.Value("string")}]})
    return _parquet(rows, features, out, "test")


def wild(out: Path, n: int = 4) -> Path:
    """SakanaAI/JA-VLM-Bench-In-the-Wild: image, question, answer (+ page_url, image_url)."""
    rows: dict[str, list] = {"image": [], "question": [], "answer": [], "page_url": [], "image_url": []}
    for i in range(n):
        c = colour_of(i)
        rows["image"].append(_image(c))
        rows["question"].append("写真に写っているものを説明してください。")
        rows["answer"].append(f"灰色の背景に{c}い丸が描かれています。")
        rows["page_url"].append("")
        rows["image_url"].append("")
    features = datasets.Features({"image": datasets.Image(), **{k: datasets.Value("string") for k in
                                                                 ("question", "answer", "page_url", "image_url")}})
    return _parquet(rows, features, out, "test")


def jdocqa(out: Path, n: int = 4) -> Path:
    """speed/JDocQA: question, answer, answer_type (0-3), image_0..image_3 (None when absent), question_id."""
    rows: dict[str, list] = {"question": [], "answer": [], "answer_type": [], "question_id": [],
                             "image_0": [], "image_1": [], "image_2": [], "image_3": []}
    for i in range(n):
        c = colour_of(i)
        rows["question"].append("文書の図形は何色ですか？")
        rows["answer"].append(c if i % 2 == 0 else f"{c}色の丸が描かれた文書です。")
        rows["answer_type"].append(1 if i % 2 == 0 else 3)
        rows["question_id"].append(i)
        rows["image_0"].append(_image(c))
        rows["image_1"].append(_image(colour_of(i + 1)) if i == 0 else None)
        rows["image_2"].append(None)
        rows["image_3"].append(None)
    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "answer_type": datasets.Value("int64"), "question_id": datasets.Value("int64"),
                                  **{f"image_{k}": datasets.Image() for k in range(4)}})
    return _parquet(rows, features, out, "test")


def all_tasks(root: Path) -> dict[str, str]:
    return {"japanese-heron-bench": str(heron(root / "heron")), "ja-vg-vqa-500": str(vg_vqa(root / "vg")),
            "ja-vlm-bench-in-the-wild": str(wild(root / "wild")), "jdocqa": str(jdocqa(root / "jdocqa"))}


# -- loopback responders --------------------------------------------------------------------------

def _image_colour(body: dict[str, Any]) -> str | None:
    """The colour of the first picture the request carries (decoded from its data URL)."""
    import base64

    for m in body.get("messages", []):
        if isinstance(m.get("content"), list):
            for p in m["content"]:
                if p.get("type") == "image_url":
                    img = Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1])))
                    px = img.convert("RGB").getpixel((img.width // 2, img.height // 2))
                    return min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], px, strict=True)))
    return None


def vlm_responder(body: dict[str, Any]) -> str:
    """A VLM stand-in that looks at the picture: names the centre colour."""
    colour = _image_colour(body) or "不明"
    return f"{colour}色の丸です。"


def judge_responder(body: dict[str, Any]) -> str | Reply:
    """A judge stand-in: scores an answer by whether it names the colour the reference names."""
    prompt = last_user_text(body)
    if "# 回答A" in prompt:
        ref = prompt.split("# 回答A", 1)[1].split("# 回答B", 1)[0]
        ans = prompt.split("# 回答B", 1)[1].split("# 採点基準", 1)[0]
        good = any(c in ref and c in ans for c in COLOURS)
        return json.dumps({"reason": "色が一致" if good else "色が違う", "score_a": 8, "score_b": 8 if good else 2},
                          ensure_ascii=False)
    ref = prompt.split("# 正解例", 1)[1].split("# モデルの回答", 1)[0]
    ans = prompt.split("# モデルの回答", 1)[1].split("# 採点基準", 1)[0]
    good = any(c in ref and c in ans for c in COLOURS)
    return json.dumps({"reason": "一致" if good else "不一致", "score": 5 if good else 1}, ensure_ascii=False)


def fenced(text: str) -> str:
    return f"採点結果は次の通りです。\n```json\n{text}\n```"


def strip_json(text: str) -> str:
    return re.sub(r"\s+", " ", text)
