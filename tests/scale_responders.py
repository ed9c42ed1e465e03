"""Replies for the scale-out tests: persona-qa answers that pass all its checks, so no record is
dropped and any executor must write exactly the first n inputs (with drops, which n records win
depends on timing)."""

from __future__ import annotations

from typing import Any

from synthgen.loopback_server import japanese_responder, last_user_text


def answers(body: dict[str, Any]) -> str:
    text = japanese_responder(body)
    prompt = last_user_text(body)
    return text if "問題を一つ作って" in prompt or "追加の質問" in prompt else text + "\n答え：6分"
