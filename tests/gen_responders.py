"""Scripted replies for the generators' breadth tests (categories, styles, persona-qa, preference pairs).

Each responder reads the prompt the generator sent and answers in the shape a good model
would, echoing what the prompt asked for (the category's label and answer format, the caption
style, the difficulty) so tests can check that the right instructions reached the model.
It proves the plumbing and the checks, not the data's quality.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from image_responders import CAPTIONS_JA, QUESTIONS, image_responder

from synthgen.generators.category_recaption import DEFAULT_CATEGORIES, bundled_multi_image_categories
from synthgen.loopback_server import Reply, last_user_text

MULTI_CATEGORIES = bundled_multi_image_categories()
BY_LABEL = {c.label: c for c in [*DEFAULT_CATEGORIES, *MULTI_CATEGORIES]}
_ASK = re.compile(r"「([^」]+)」の(質問|依頼)を一つ作って")
SHORT_ANSWERS = {"counting": "2つです。", "ocr": "「NO.7」と書かれています。", "information_extraction": "赤い丸です。",
                 "color": "赤色です。", "position": "左側です。", "yes_no": "はい、写っています。",
                 "title": "白地に並ぶ二つの図形", "pick_image": "1枚目です。赤い丸がいちばん左にあります。",
                 "count_across": "4つです。1枚目に2つ、2枚目に2つあります。"}


def request_of(label: str) -> str:
    return f"この画像を題材にして、{label}を書いてください。"


def question_of(label: str) -> str:
    cat = BY_LABEL[label]
    if cat.name in QUESTIONS:
        return QUESTIONS[cat.name]
    return f"この画像の{label}について、どう考えられますか?"


def long_answer(label: str) -> str:
    return (f"画像では、白い背景の左に赤い丸、右に青い四角が見えます。{label}としては、二つの図形の対比が"
            "はっきりしていて、すっきりとした印象を受けます。")


class RecaptionWriter:
    """Writer + judge for category-recaption; records every prompt it saw, by kind."""

    def __init__(self) -> None:
        self.base = image_responder()
        self.prompts: dict[str, list[str]] = {"question": [], "answer": [], "followup": [], "verify": []}
        self._lock = threading.Lock()

    def _seen(self, kind: str, prompt: str) -> None:
        with self._lock:
            self.prompts[kind].append(prompt)

    def __call__(self, body: dict[str, Any]) -> str | Reply:
        prompt = last_user_text(body)
        if "英文：" in prompt or "文章：" in prompt or any(
                isinstance(m.get("content"), list) for m in body.get("messages", [])):
            return self.base(body)
        asked = _ASK.search(prompt)
        if asked:
            self._seen("question", prompt)
            label, kind = asked.groups()
            return request_of(label) if kind == "依頼" else question_of(label)
        if "続けて尋ねる質問を一つだけ" in prompt:
            self._seen("followup", prompt)
            n = prompt.count("アシスタント：")
            return f"さきほどの{n}番目のお答えについて、左の赤い丸をもう少し詳しく教えてください。"
        if "利用者の質問：" in prompt:
            self._seen("answer", prompt)
            question = prompt.split("利用者の質問：", 1)[1].strip().splitlines()[0]
            for cat in [*DEFAULT_CATEGORIES, *MULTI_CATEGORIES]:
                if question in (request_of(cat.label), question_of(cat.label)):
                    return SHORT_ANSWERS[cat.name] if cat.answer == "short" else long_answer(cat.label)
            return "左の赤い丸は、つやのない平らな塗りで、青い四角よりひと回り小さく見えます。"
        if "矛盾していないか" in prompt:
            self._seen("verify", prompt)
            return "一致"
        return Reply(status=400, raw=b'{"error": "unexpected prompt"}')


CAPTION_TEXT = CAPTIONS_JA["dense"]


PQA_QUESTION = "問題：ある店で1個120円のりんごを5個買うと、代金はいくらになりますか。"
PQA_ANSWER = "1個120円のりんごを5個買うので、120 × 5 = 600 となります。したがって代金は600円です。\n答え：600円"


def persona_qa_responder(body: dict[str, Any]) -> str:
    """persona-qa's writer and answerer: a problem, a follow-up that changes one number, an answer
    that shows its steps in です・ます and ends on the final-answer line."""
    prompt = last_user_text(body)
    turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
    if "問題を一つ作って" in prompt:
        return PQA_QUESTION
    if "追加の質問" in prompt:
        return f"りんごが{5 + turn}個の場合、代金はいくらになりますか。"
    count = 5 + (turn - 1 if turn else 0)
    return f"1個120円のりんごを{count}個買うので、120 × {count} = {120 * count} となります。" \
           f"したがって代金は{120 * count}円です。\n答え：{120 * count}円"


RIGHT = "1個120円のりんごを5個買うので、120 × 5 = 600 となります。したがって代金は600円です。\n答え：600円"
WRONG = "りんごは5個なので、100 × 5 = 500 となり、代金は500円です。\n答え：500円"
TERSE = "600円です。"


def preference_responder(body: dict[str, Any]) -> str:
    """Writer, two answerers and the judge of preference-pairs.

    The answer depends on what the generator varied: a low temperature, the `good` model or the
    careful system prompt gives the right answer; a high temperature or the `rival` model a wrong
    one; the terse prompt a bare result. The judge picks whichever shown answer says 600円 with
    the final-answer line, and gives its reason."""
    messages = body.get("messages", [])
    prompt = last_user_text(body)
    if "問題を一つ作って" in prompt:
        return PQA_QUESTION
    if "追加の質問" in prompt:
        asked = sum(1 for m in messages if m.get("role") == "assistant")
        return f"りんごが{5 + asked}個の場合、代金はいくらになりますか。"
    if "より良い方を選んで" in prompt:
        a = prompt.split("回答A：", 1)[1].split("回答B：", 1)[0]
        better = "A" if "答え：600円" in a else "B"
        return f"{better}\n理由：{better}の方が計算が正しく、最後の行に答えを示しているからです。"
    system_prompt = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "簡潔に答えて" in system_prompt:
        return TERSE
    if body.get("model") == "rival" or float(body.get("temperature") or 0) > 1:
        return WRONG
    return RIGHT


def caption_style_responder(body: dict[str, Any]) -> str | Reply:
    """VLM and translator for caption-translate's style bank: the VLM names the style it was asked
    for (found by its prompt), the translator answers in です・ます with the style's label."""
    from synthgen.generators.caption_translate import bundled_styles

    bank = bundled_styles()
    prompt = last_user_text(body)
    has_image = any(isinstance(m.get("content"), list) for m in body.get("messages", []))
    if has_image:
        style = next((s for s in bank if s.prompt_en == prompt or s.prompt_ja == prompt), None)
        if style is None:
            return Reply(status=400, raw=b'{"error": "unknown style prompt"}')
        return f"[{style.name}] A red circle and a blue square on a white background, side by side."
    if "英文：" in prompt:
        label = prompt.split("画像の", 1)[1].split("です。", 1)[0]
        return f"これは{label}です。白い背景に、赤い丸と青い四角が並んでいます。"
    return Reply(status=400, raw=b'{"error": "unexpected prompt"}')


def _passage_of(prompt: str) -> str:
    return re.search(r"# (?:表示する)?文章\n(.*?)\n\n# ", prompt, re.DOTALL).group(1)


def document_page(prompt: str) -> str:
    """A page in the shape html-render's document layouts ask for, showing the whole passage."""
    lines = [s for s in _passage_of(prompt).replace("。", "。\n").splitlines() if s.strip()]
    half = max(1, len(lines) // 2)
    if "複数ページにわたる報告書" in prompt:
        body = "".join(f'<section class="page"><header>調査報告書</header><h2>{i + 1}. 概要</h2>'
                       f'{"".join(f"<p>{x}</p>" for x in part)}<footer>{i + 1} / 2</footer></section>'
                       for i, part in enumerate((lines[:half], lines[half:])))
    elif "セルを結合した表" in prompt:
        rows = "".join(f"<tr><td>{i + 1}</td><td>{x}</td></tr>" for i, x in enumerate(lines))
        body = f'<table border="1"><tr><th colspan="2">記録</th></tr>{rows}</table>'
    elif "請求書" in prompt or "時刻表" in prompt:
        rows = "".join(f"<tr><td>{x}</td><td>1</td></tr>" for x in lines)
        body = f"<h1>書類</h1><table border=\"1\"><tr><th>内容</th><th>数量</th></tr>{rows}</table>"
    else:
        body = "".join(f"<p>{x}</p>" for x in lines)
    return ("```html\n<!DOCTYPE html><html lang=\"ja\"><head><meta charset=\"utf-8\"><style>body{font-size:18px;"
            f"max-width:700px}}</style></head><body>{body}</body></html>\n```")


def span_qa(prompt: str) -> str:
    import orjson

    passage = _passage_of(prompt)
    first = passage.split("。")[0]
    return orjson.dumps([{"question": "最初の文の冒頭は何ですか。", "answer": first[:8]}]).decode()


def document_responder(body: dict[str, Any]) -> str | Reply:
    prompt = last_user_text(body)
    if "完成したHTMLページ" in prompt:
        return document_page(prompt)
    if "質問と答え" in prompt:
        return span_qa(prompt)
    return Reply(status=400)
