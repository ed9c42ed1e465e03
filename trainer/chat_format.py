"""The Japanese chat format: one definition used for training labels and, as Jinja, for inference.

    [system]\n
    ユーザー: <image>\n質問\n
    アシスタント: 答え</s>\n

Training renders segments with a train flag (only assistant replies and their end token are
learned); `chat_template()` renders the same text for `processor.apply_chat_template`, so a
prompt built at inference matches what the model saw. A test checks the two agree.
"""

from __future__ import annotations

from typing import Any

USER = "ユーザー: "
ASSISTANT = "アシスタント: "
END = "\n"


def content_text(content: Any, image_token: str) -> str:
    """OpenAI content (a string or a list of text/image parts) as text with image placeholders."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    out = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            out.append(part.get("text") or "")
        elif kind in ("image", "image_url"):
            out.append(image_token)
    return "".join(out)


def segments(messages: list[dict[str, Any]], eos: str, image_token: str,
             system_prompt: str | None = None) -> list[tuple[str, bool]]:
    """(text, learn) pieces of a conversation, in order."""
    out: list[tuple[str, bool]] = []
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        out.append((system_prompt + END, False))
    for msg in messages:
        role = msg.get("role")
        text = content_text(msg.get("content"), image_token)
        if role == "system":
            out.append((text + END, False))
        elif role == "user":
            out.append((USER + text + END, False))
        elif role == "assistant":
            out.append((ASSISTANT, False))
            out.append((text + eos, True))
            out.append((END, False))
        else:
            raise ValueError(f"unknown role {role!r}")
    return out


def render(messages: list[dict[str, Any]], eos: str, image_token: str, system_prompt: str | None = None,
           add_generation_prompt: bool = False) -> str:
    text = "".join(t for t, _ in segments(messages, eos, image_token, system_prompt))
    return text + (ASSISTANT if add_generation_prompt else "")


def chat_template(image_token: str = "<image>", system_prompt: str | None = None) -> str:
    system = ""
    if system_prompt:
        system = ("{%- if not (messages and messages[0]['role'] == 'system') -%}"
                  f"{{{{ {system_prompt + END!r} }}}}" "{%- endif -%}")
    return (
        system
        + "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
        "{%- else -%}{%- set ns = namespace(t='') -%}"
        "{%- for part in message['content'] -%}"
        f"{{%- if part['type'] in ('image', 'image_url') -%}}{{%- set ns.t = ns.t + {image_token!r} -%}}"
        "{%- elif part['type'] == 'text' -%}{%- set ns.t = ns.t + part['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- set text = ns.t -%}{%- endif -%}"
        "{%- if message['role'] == 'system' -%}{{ text + '\\n' }}"
        f"{{%- elif message['role'] == 'user' -%}}{{{{ {USER!r} + text + '\\n' }}}}"
        f"{{%- elif message['role'] == 'assistant' -%}}{{{{ {ASSISTANT!r} + text + eos_token + '\\n' }}}}"
        "{%- endif -%}{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ {ASSISTANT!r} }}}}{{%- endif -%}}"
    )
