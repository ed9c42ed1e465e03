"""Charts drawn from a generated table: bar, line and pie as inline SVG, with questions the table answers.

Why we draw them ourselves instead of asking a model for the page: the ground truth of a chart
question is a number read off the picture, and a model-written chart may not draw what its
table says. Here the table is made first (a topic from data/chart_topics.yaml, values from the
record's RNG), the SVG is a pure function of it, and every answer is computed from the table;
`read_chart` recovers the values from the SVG's geometry alone, so a test (or the generator's
own self-check) can prove that the picture shows the table. The page is our markup, not a
model's, so it skips the sanitiser (which drops SVG) but still renders in the sandboxed pool.
"""

from __future__ import annotations

import html
import itertools
import math
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from synthgen.generators import data

KINDS = ("bar", "line", "pie")
_NUM = r"-?\d+(?:\.\d+)?"


@dataclass
class Table:
    kind: str
    title: str
    unit: str
    labels: list[str]
    values: list[float]
    decimals: int

    def fmt(self, value: float) -> str:
        """A value as the chart prints it (thousands separated, the topic's decimals)."""
        return f"{value:,.{self.decimals}f}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChartStyle:
    value_labels: bool = True
    horizontal: bool = False
    gridlines: bool = True
    colors: list[str] = field(default_factory=lambda: ["#4e79a7"])


SERIES_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac")


def topics() -> list[dict[str, Any]]:
    return list(data.load("chart_topics.yaml"))


def make_table(kind: str, rng: random.Random, bank: list[dict[str, Any]] | None = None) -> Table:
    """A table for a `kind` chart: distinct values (so the largest and smallest are unique)."""
    topic = rng.choice([t for t in (bank or topics()) if kind in t["kinds"]])
    subject = rng.choice(topic.get("subjects") or [""])
    return _table(kind, topic, subject, _labels(kind, topic, rng), rng)


def make_pair(kind: str, rng: random.Random, bank: list[dict[str, Any]] | None = None) -> tuple[Table, Table]:
    """Two tables of one topic for two subjects (e.g. two cities), with the same labels, for a
    two-image record: every label's values differ, and one label differs the most."""
    topic = rng.choice([t for t in (bank or topics()) if kind in t["kinds"] and len(t.get("subjects") or []) >= 2])
    first, second = rng.sample(topic["subjects"], 2)
    labels = _labels(kind, topic, rng)
    while True:
        a, b = _table(kind, topic, first, labels, rng), _table(kind, topic, second, labels, rng)
        gaps = [abs(x - y) for x, y in zip(a.values, b.values, strict=True)]
        if min(gaps) > 0 and gaps.count(max(gaps)) == 1:
            return a, b


def _labels(kind: str, topic: dict[str, Any], rng: random.Random) -> list[str]:
    pool = list(topic["labels"])
    k = rng.randint(4 if kind == "line" else 3, min(8 if kind != "pie" else 6, len(pool)))
    if topic.get("ordered"):
        start = rng.randrange(len(pool) - k + 1)
        return pool[start:start + k]
    return rng.sample(pool, k)


def _table(kind: str, topic: dict[str, Any], subject: str, labels: list[str], rng: random.Random) -> Table:
    title = topic["title"].replace("{x}", subject).replace("（）", "")
    decimals = int(topic.get("decimals", 0))
    low, high = float(topic["low"]), float(topic["high"])
    if kind != "line":
        low = max(low, 1.0)  # bars and slices need positive values
    while True:
        if topic.get("ordered"):  # a sequence moves step by step, as temperatures and sales do
            walk = [rng.uniform(low, high)]
            for _ in labels[1:]:
                walk.append(min(high, max(low, walk[-1] + rng.uniform(-0.3, 0.3) * (high - low))))
            values = [round(v, decimals) for v in walk]
        else:
            values = [round(rng.uniform(low, high), decimals) for _ in labels]
        if kind == "pie":
            values = _percentages(values)
        if len(set(values)) == len(values) and (kind != "line" or _unique_rise(values)):
            break
    return Table(kind=kind, title=title, unit="％" if kind == "pie" else topic["unit"], labels=labels,
                 values=values, decimals=0 if kind == "pie" else decimals)


def _percentages(values: list[float]) -> list[float]:
    """Whole percentages summing to exactly 100 (largest remainder), each at least 1."""
    total = sum(values)
    raw = [max(v / total * 100, 1.0) for v in values]
    floors = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - floors[i], reverse=True)
    for i in order[:100 - sum(floors)]:
        floors[i] += 1
    while sum(floors) > 100:
        i = max(range(len(floors)), key=lambda j: floors[j])
        floors[i] -= 1
    return [float(f) for f in floors]


def _unique_rise(values: list[float]) -> bool:
    rises = [b - a for a, b in itertools.pairwise(values)]
    return max(rises) > 0 and rises.count(max(rises)) == 1


def axis_max(values: list[float]) -> float:
    """A round axis top above the largest value (1, 2, 2.5 or 5 times a power of ten)."""
    top = max(max(values), 1e-9)
    step = 10 ** math.floor(math.log10(top))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= top * 1.05:
            return m * step
    return 10 * step


# --- drawing ---------------------------------------------------------------------------------

W, H = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 30, 60


def svg(table: Table, style: ChartStyle, *, font: str, text_color: str) -> str:
    body = {"bar": _bars, "line": _line, "pie": _pie}[table.kind](table, style, text_color)
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-family="{html.escape(font)}" font-size="16" fill="{text_color}">'
            f"{body}</svg>")


def _axes(table: Table, style: ChartStyle, text_color: str, *, horizontal: bool,
          low: float = 0.0) -> tuple[str, float]:
    top = axis_max(table.values)
    parts = []
    x0, y0, x1, y1 = LEFT, H - BOTTOM, W - RIGHT, TOP
    for i in range(5):
        v = low + (top - low) * i / 4
        label = html.escape(f"{v:,.{max(table.decimals, 1 if top < 10 else 0)}f}")
        cls = ' class="tick-max"' if i == 4 else ' class="tick-min"' if i == 0 else ""
        if horizontal:
            x = x0 + (x1 - x0) * i / 4
            if style.gridlines and i:
                parts.append(f'<line x1="{x:.3f}" y1="{y1}" x2="{x:.3f}" y2="{y0}" stroke="#cccccc"/>')
            parts.append(f'<text{cls} x="{x:.3f}" y="{y0 + 18}" text-anchor="middle">{label}</text>')
        else:
            y = y0 - (y0 - y1) * i / 4
            if style.gridlines and i:
                parts.append(f'<line x1="{x0}" y1="{y:.3f}" x2="{x1}" y2="{y:.3f}" stroke="#cccccc"/>')
            parts.append(f'<text{cls} x="{x0 - 8}" y="{y + 5:.3f}" text-anchor="end">{label}</text>')
    parts.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="{text_color}"/>')
    parts.append(f'<line class="axis-v" x1="{x0}" y1="{y1}" x2="{x0}" y2="{y0}" stroke="{text_color}"/>')
    return "".join(parts), top


def _bars(table: Table, style: ChartStyle, text_color: str) -> str:
    axes, top = _axes(table, style, text_color, horizontal=style.horizontal)
    parts = [axes]
    n = len(table.values)
    x0, y0, x1, y1 = LEFT, H - BOTTOM, W - RIGHT, TOP
    color = style.colors[0]
    for i, (label, value) in enumerate(zip(table.labels, table.values, strict=True)):
        text = html.escape(table.fmt(value))
        if style.horizontal:
            band = (y0 - y1) / n
            y = y1 + band * i + band * 0.15
            width = (x1 - x0) * value / top
            parts.append(f'<rect class="bar" x="{x0}" y="{y:.3f}" width="{width:.3f}" height="{band * 0.7:.3f}" '
                         f'fill="{color}"/>')
            parts.append(f'<text x="{x0 - 6}" y="{y + band * 0.35 + 5:.3f}" text-anchor="end" font-size="14">'
                         f"{html.escape(label)}</text>")
            if style.value_labels:
                parts.append(f'<text x="{x0 + width + 4:.3f}" y="{y + band * 0.35 + 5:.3f}">{text}</text>')
        else:
            band = (x1 - x0) / n
            x = x0 + band * i + band * 0.15
            height = (y0 - y1) * value / top
            parts.append(f'<rect class="bar" x="{x:.3f}" y="{y0 - height:.3f}" width="{band * 0.7:.3f}" '
                         f'height="{height:.3f}" fill="{color}"/>')
            parts.append(f'<text x="{x + band * 0.35:.3f}" y="{y0 + 20}" text-anchor="middle" font-size="14">'
                         f"{html.escape(label)}</text>")
            if style.value_labels:
                parts.append(f'<text x="{x + band * 0.35:.3f}" y="{y0 - height - 6:.3f}" text-anchor="middle">'
                             f"{text}</text>")
    return "".join(parts)


def _line(table: Table, style: ChartStyle, text_color: str) -> str:
    lo = _line_low(table.values)
    axes, top = _axes(table, style, text_color, horizontal=False, low=lo)
    parts = [axes]
    n = len(table.values)
    x0, y0, x1, y1 = LEFT, H - BOTTOM, W - RIGHT, TOP
    points = []
    for i, (label, value) in enumerate(zip(table.labels, table.values, strict=True)):
        x = x0 + (x1 - x0) * (i + 0.5) / n
        y = y0 - (y0 - y1) * (value - lo) / (top - lo)
        points.append((x, y))
        parts.append(f'<text x="{x:.3f}" y="{y0 + 20}" text-anchor="middle" font-size="14">{html.escape(label)}</text>')
        if style.value_labels:
            parts.append(f'<text x="{x:.3f}" y="{y - 10:.3f}" text-anchor="middle">{html.escape(table.fmt(value))}</text>')
    color = style.colors[0]
    path = " ".join(f"{x:.3f},{y:.3f}" for x, y in points)
    parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="3"/>')
    parts += [f'<circle cx="{x:.3f}" cy="{y:.3f}" r="4" fill="{color}"/>' for x, y in points]
    return "".join(parts)


def _line_low(values: list[float]) -> float:
    """The axis bottom of a line chart: 0, or a round number below a negative minimum."""
    low = min(values)
    return 0.0 if low >= 0 else -axis_max([-low])


def _pie(table: Table, style: ChartStyle, text_color: str) -> str:
    cx, cy, r = W / 2 - 90, H / 2, 150
    parts = []
    angle = -90.0
    for i, (label, value) in enumerate(zip(table.labels, table.values, strict=True)):
        sweep = 360 * value / 100
        a0, a1 = math.radians(angle), math.radians(angle + sweep)
        large = 1 if sweep > 180 else 0
        color = style.colors[i % len(style.colors)]
        sx, sy = cx + r * math.cos(a0), cy + r * math.sin(a0)
        ex, ey = cx + r * math.cos(a1), cy + r * math.sin(a1)
        parts.append(f'<path class="slice" d="M {cx:.3f} {cy:.3f} L {sx:.4f} {sy:.4f} A {r} {r} 0 {large} 1 '
                     f'{ex:.4f} {ey:.4f} Z" fill="{color}" stroke="#ffffff" data-start="{angle:.4f}" '
                     f'data-sweep="{sweep:.4f}"/>')
        ly = 40 + i * 26
        parts.append(f'<rect x="{W - 190}" y="{ly - 12}" width="14" height="14" fill="{color}"/>')
        legend = f"{label}　{table.fmt(value)}％" if style.value_labels else label
        parts.append(f'<text x="{W - 170}" y="{ly}">{html.escape(legend)}</text>')
        angle += sweep
    return "".join(parts)


def page(table: Table, style: ChartStyle, *, font: str, font_size: int, palette: dict[str, str]) -> str:
    """The whole page: title, the chart, its unit and a note that the data are made up."""
    chart = svg(table, style, font=font, text_color=palette["text"])
    unit = "" if table.kind == "pie" else f"単位：{html.escape(table.unit)}　"
    return ('<!DOCTYPE html><html lang="ja"><head><meta charset="utf-8"><style>'
            f'body{{margin:0;padding:24px;background:{palette["background"]};color:{palette["text"]};'
            f'font-family:"{font}",sans-serif;font-size:{font_size}px}}'
            f'h1{{font-size:{font_size + 8}px;margin:0 0 12px;border-left:8px solid {palette["accent"]};'
            'padding-left:10px}p.note{margin:8px 0 0;font-size:14px}</style></head><body>'
            f'<h1>{html.escape(table.title)}</h1>{chart}'
            f'<p class="note">{unit}※架空のデータです。</p></body></html>')


# --- reading the picture's geometry back (self-check and tests) --------------------------------


def read_chart(document: str, kind: str) -> list[float]:
    """The values the SVG draws, recovered from shapes and the axis alone (no labels read)."""
    if kind == "pie":
        sweeps = [float(m) for m in re.findall(rf'class="slice"[^>]*data-sweep="({_NUM})"', document)]
        return [s / 360 * 100 for s in sweeps]
    top = float(re.search(r'class="tick-max"[^>]*>([^<]+)<', document).group(1).replace(",", ""))
    if kind == "line":
        points = re.search(r'class="series" points="([^"]+)"', document).group(1)
        low = float(re.search(r'class="tick-min"[^>]*>([^<]+)<', document).group(1).replace(",", ""))
        ys = [float(p.split(",")[1]) for p in points.split()]
        y0, y1 = H - BOTTOM, TOP
        return [low + (y0 - y) / (y0 - y1) * (top - low) for y in ys]
    rects = re.findall(rf'class="bar" x="({_NUM})" y="({_NUM})" width="({_NUM})" height="({_NUM})"', document)
    horizontal = rects and float(rects[0][0]) == LEFT and len({r[0] for r in rects}) == 1
    if horizontal:
        return [float(w) / (W - RIGHT - LEFT) * top for _, _, w, _ in rects]
    return [float(h) / (H - BOTTOM - TOP) * top for _, _, _, h in rects]


# --- questions whose answers need the chart ------------------------------------------------------


def questions(table: Table, style: ChartStyle, rng: random.Random, count: int) -> list[dict[str, str]]:
    """`count` distinct Q&A pairs, each answer computed from the table. Exact values are asked
    only when the chart prints them (value labels); otherwise ranking and comparison."""
    t, labels, values = table, table.labels, table.values
    by = dict(zip(labels, values, strict=True))
    hi, lo = labels[values.index(max(values))], labels[values.index(min(values))]
    noun = {"pie": "割合", "line": "値", "bar": "値"}[t.kind]
    pool: list[dict[str, str]] = [
        {"question": rng.choice([f"このグラフで{noun}が最も大きい項目はどれですか？", f"{noun}が一番大きいのはどれですか？"]),
         "answer": hi, "kind": "max"},
        {"question": rng.choice([f"このグラフで{noun}が最も小さい項目はどれですか？", f"{noun}が一番小さいのはどれですか？"]),
         "answer": lo, "kind": "min"},
    ]
    a, b = rng.sample(labels, 2)
    pool.append({"question": f"「{a}」と「{b}」では、どちらの{noun}が大きいですか？",
                 "answer": a if by[a] > by[b] else b, "kind": "compare"})
    if t.kind == "line":
        rises = [values[i + 1] - values[i] for i in range(len(values) - 1)]
        i = rises.index(max(rises))
        pool.append({"question": "前の時点から最も大きく増えたのはどの時点ですか？", "answer": labels[i + 1], "kind": "max_rise"})
        j = rng.randrange(len(values) - 1)
        trend = "増えた" if values[j + 1] > values[j] else "減った"
        pool.append({"question": f"「{labels[j]}」から「{labels[j + 1]}」にかけて、値は増えましたか、減りましたか？"
                                 "「増えた」か「減った」で答えてください。", "answer": trend, "kind": "trend"})
    if style.value_labels:
        c = rng.choice(labels)
        unit = t.unit
        pool.append({"question": f"「{c}」の{noun}はいくつですか？単位も付けて答えてください。",
                     "answer": f"{t.fmt(by[c])}{unit}", "kind": "value"})
        x, y = sorted(rng.sample(labels, 2), key=lambda lab: -by[lab])
        pool.append({"question": f"「{x}」は「{y}」よりいくつ大きいですか？単位も付けて答えてください。",
                     "answer": f"{t.fmt(round(by[x] - by[y], t.decimals))}{unit}", "kind": "difference"})
        if t.kind == "pie":
            p, q = rng.sample(labels, 2)
            pool.append({"question": f"「{p}」と「{q}」を合わせると何％ですか？",
                         "answer": f"{t.fmt(by[p] + by[q])}％", "kind": "sum"})
    rng.shuffle(pool)
    return pool[:count]


def pair_questions(a: Table, b: Table, style: ChartStyle, rng: random.Random, count: int) -> list[dict[str, str]]:
    """Questions that need both charts (1枚目 = `a`, 2枚目 = `b`), answers computed from the tables."""
    noun = "割合" if a.kind == "pie" else "値"
    by_a, by_b = dict(zip(a.labels, a.values, strict=True)), dict(zip(b.labels, b.values, strict=True))
    gaps = {lab: abs(by_a[lab] - by_b[lab]) for lab in a.labels}
    c = rng.choice(a.labels)
    pool = [
        {"question": f"「{c}」の{noun}が大きいのは、1枚目と2枚目のどちらのグラフですか？",
         "answer": "1枚目" if by_a[c] > by_b[c] else "2枚目", "kind": "which_image"},
        {"question": f"二つのグラフで、{noun}の差が最も大きい項目はどれですか？",
         "answer": max(gaps, key=lambda lab: gaps[lab]), "kind": "max_gap"},
        {"question": rng.choice([f"1枚目のグラフで{noun}が最も大きい項目はどれですか？",
                                 f"2枚目のグラフで{noun}が最も大きい項目はどれですか？"]), "answer": "", "kind": "max_in"},
    ]
    which = pool[2]
    table = a if which["question"].startswith("1枚目") else b
    which["answer"] = table.labels[table.values.index(max(table.values))]
    if style.value_labels:
        d = rng.choice(a.labels)
        pool.append({"question": f"「{d}」について、1枚目と2枚目の{noun}の差はいくつですか？単位も付けて答えてください。",
                     "answer": f"{a.fmt(round(gaps[d], a.decimals))}{a.unit}", "kind": "gap"})
    rng.shuffle(pool)
    return pool[:count]


def to_markdown(table: Table) -> str:
    """The table as the 'chart to table' target (only asked when the chart prints its values)."""
    head = f"| 項目 | {'割合' if table.kind == 'pie' else '値'}（{table.unit}） |\n| --- | --- |\n"
    return head + "\n".join(f"| {lab} | {table.fmt(v)} |" for lab, v in zip(table.labels, table.values, strict=True))
