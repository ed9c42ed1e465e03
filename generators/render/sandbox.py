"""Make LLM-written HTML safe to draw: the first of two fences (the browser is the second).

A model asked for a poster may still write `<script>`, a web font, a tracking pixel or an
iframe onto a local file. We keep only markup and inline CSS that draw text, drop every
URL that is not a `data:` URL, and wrap the result in our own document whose
Content-Security-Policy forbids any fetch. The page pool also blocks every request and runs
with JavaScript off, so a gap here is not a leak; both layers are tested separately.
"""

from __future__ import annotations

import re

import nh3

# Tags that draw text and boxes. No img/iframe/object/embed/svg (they fetch or script),
# no form controls (their values are not part of innerText, so the "read all the text"
# target would miss what the picture shows).
ALLOWED_TAGS = frozenset({
    "a", "abbr", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote", "br",
    "caption", "center", "cite", "code", "col", "colgroup", "data", "dd", "del", "details", "dfn",
    "div", "dl", "dt", "em", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hgroup", "hr", "i", "ins", "kbd", "label", "legend", "fieldset", "li", "main", "mark",
    "nav", "ol", "p", "pre", "q", "rp", "rt", "rtc", "ruby", "s", "samp", "section", "small", "span",
    "strike", "strong", "style", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "time", "tr", "tt", "u", "ul", "var", "wbr", "button",
})
GLOBAL_ATTRIBUTES = {"style", "class", "id", "lang", "dir"}
TAG_ATTRIBUTES = {
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "scope", "align", "valign"},
    "col": {"span"}, "colgroup": {"span"}, "ol": {"start", "reversed", "type"},
    "time": {"datetime"}, "data": {"value"}, "table": {"border", "cellpadding", "cellspacing"},
}
# Removed together with their content: their text is not page text.
DROP_WITH_CONTENT = {"script", "title", "noscript", "template", "iframe", "object", "textarea",
                     "select", "svg", "math", "head"}

# CSS that could fetch: url(...) other than data:, image-set("..."), @import, @font-face.
_CSS_URL = re.compile(r"url\(\s*(?!['\"]?\s*data:)[^)]*\)", re.IGNORECASE)
_CSS_IMAGE_SET = re.compile(r"(?:-webkit-)?image-set\([^)]*\)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import[^;]*;?", re.IGNORECASE)
_CSS_FONT_FACE = re.compile(r"@font-face\s*\{[^}]*\}", re.IGNORECASE)
_BODY_OPEN = re.compile(r"<body\b([^>]*)>", re.IGNORECASE)
_STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.IGNORECASE | re.DOTALL)

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src 'none'; "
       "connect-src 'none'; frame-src 'none'; form-action 'none'; base-uri 'none'")
BASE_CSS = ('html{font-family:"Noto Sans CJK JP","Noto Sans JP",sans-serif}'
            "body{margin:0}")
MAX_INPUT_CHARS = 300_000


class UnsafeHtml(ValueError):
    """The markup cannot be made into a page (too large, or nothing left to draw)."""


def _clean_css(css: str) -> str:
    css = _CSS_FONT_FACE.sub("", css)
    css = _CSS_IMPORT.sub("", css)
    css = _CSS_IMAGE_SET.sub("none", css)
    return _CSS_URL.sub("none", css)


def _clean(fragment: str) -> str:
    return nh3.clean(
        fragment, tags=set(ALLOWED_TAGS), clean_content_tags=DROP_WITH_CONTENT,
        attributes={"*": GLOBAL_ATTRIBUTES, **TAG_ATTRIBUTES}, url_schemes=set(), link_rel=None,
        strip_comments=True, generic_attribute_prefixes=set(),
    )


def _body_attributes(html: str) -> str:
    """The `<body>` tag's own class/style, cleaned (fragment parsing would drop them)."""
    match = _BODY_OPEN.search(html)
    if not match:
        return ""
    cleaned = _clean(f"<div{match.group(1)}></div>")
    inner = cleaned[len("<div"):cleaned.index(">")] if cleaned.startswith("<div") else ""
    return _clean_css(inner)


def sanitize(html: str) -> str:
    """A complete, self-contained HTML document holding only the safe part of `html`.

    Style blocks in `<head>` are kept (moved into the body, where browsers honour them);
    everything else in the head is dropped.
    """
    if len(html) > MAX_INPUT_CHARS:
        raise UnsafeHtml(f"page of {len(html)} chars is over the {MAX_INPUT_CHARS} limit")
    styles = [m.group(1) for m in _STYLE_BLOCK.finditer(html)]
    body_attrs = _body_attributes(html)
    without_styles = _STYLE_BLOCK.sub("", html)
    body = _clean_css(_clean(without_styles))
    css = _clean_css("\n".join(styles)).replace("</", "<\\/")
    if not body.strip():
        raise UnsafeHtml("nothing drawable left after sanitising")
    return ('<!DOCTYPE html><html lang="ja"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<style>{BASE_CSS}</style><style>{css}</style></head>"
            f"<body{body_attrs}>{body}</body></html>")
