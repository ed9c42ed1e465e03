"""Reading structured answers out of model replies that were asked for JSON but wrapped it in
prose, fences or a truncated tail: judges (evaluator, quality) and generators share this."""

from __future__ import annotations

from collections.abc import Iterator


def json_spans(text: str, quotes: str = '"') -> Iterator[str]:
    """Balanced `{...}` spans, left to right, outermost first; braces inside strings (delimited
    by any of `quotes`, backslash escapes honoured) do not count. An opening brace that never
    closes (a truncated reply) is skipped and the search goes on after it."""
    start = text.find("{")
    while start != -1:
        depth, quote, escaped = 0, "", False
        for i in range(start, len(text)):
            ch = text[i]
            if quote:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == quote:
                    quote = ""
            elif ch in quotes:
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield text[start:i + 1]
                    start = text.find("{", i + 1)
                    break
        else:
            start = text.find("{", start + 1)
