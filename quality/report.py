"""`synthgen report DATASET`: a Markdown page with PNG charts a person would rather look at
than read: lengths, judge scores, top nouns, drops by reason and near-duplicate clusters.

It reads any dataset the curation reads (so a raw run and its curated copy can be compared)
and, where the folder has one, the curation manifest and drops log. Charts use a Japanese
font (Noto CJK from fonts-noto-cjk) so nouns and reasons render as text, not boxes.
"""

from __future__ import annotations

import statistics
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from synthgen.quality.records import TextView
from synthgen.quality.sources import open_source

SAMPLE_ROWS = 20_000  # nouns are counted on the first rows; lengths and scores on all of them


@lru_cache(maxsize=1)
def japanese_font() -> str | None:
    """Register a Noto CJK font with matplotlib and return its family name (None if absent)."""
    from matplotlib import font_manager

    paths = [p for p in font_manager.findSystemFonts() if "CJK" in Path(p).name and "Sans" in Path(p).name]
    paths += [p for p in font_manager.findSystemFonts() if "CJK" in Path(p).name and p not in paths]
    for path in sorted(paths, key=lambda p: ("Regular" not in p, p)):
        try:
            font_manager.fontManager.addfont(path)
            prop = font_manager.FontProperties(fname=path)
            return prop.get_name()
        except (OSError, RuntimeError, ValueError):
            continue
    return None


def _plt() -> Any:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # no per-chart INFO lines
    import matplotlib.pyplot as plt

    family = japanese_font()
    if family:
        plt.rcParams["font.family"] = [family, "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def _save(plt: Any, fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _bar(plt: Any, labels: list[str], values: list[float], title: str, path: Path, xlabel: str = "") -> str:
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.32 * len(labels) + 1)))
    ax.barh(range(len(labels))[::-1], values, color="#4C72B0")
    ax.set_yticks(range(len(labels))[::-1], labels)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for i, v in enumerate(values):
        ax.text(v, len(labels) - 1 - i, f" {v:g}", va="center", fontsize=8)
    return _save(plt, fig, path)


def collect(dataset: str | Path, split: str = "train") -> dict[str, Any]:
    """One streaming pass: lengths, scores, nouns of the first SAMPLE_ROWS, keys for clusters."""
    from synthgen.quality.balance import NounCounter

    src = open_source(dataset, split)
    cols = src.column_names
    view = TextView.for_columns(cols)
    read = [c for c in ["key", *view.columns, "judge_score"] if c in cols]
    q_len, a_len, scores = [], [], []
    nouns: Counter[str] = Counter()
    counter = NounCounter()
    texts_by_key: dict[str, str] = {}
    wanted = set()
    manifest = _manifest(Path(dataset)) if Path(dataset).exists() else None
    if manifest and manifest.get("dedup"):
        wanted = {k for k, _ in manifest["dedup"].get("biggest_clusters", [])[:5]}
    n = 0
    for batch in src.batches(2048, read):
        for row in batch.to_pylist():
            q, a = view.qa(row)
            q_len.append(len(q))
            a_len.append(len(a))
            if row.get("judge_score") is not None:
                scores.append(float(row["judge_score"]))
            if n < SAMPLE_ROWS:
                nouns.update(counter.nouns(q + "\n" + a))
            if row.get("key") in wanted:
                texts_by_key[row["key"]] = (q + " / " + a)[:120]
            n += 1
    return {"rows": n, "q_len": q_len, "a_len": a_len, "scores": scores, "nouns": nouns,
            "noun_rows": min(n, SAMPLE_ROWS), "manifest": manifest, "kept_texts": texts_by_key, "name": src.name}


def _manifest(path: Path) -> dict[str, Any] | None:
    f = path / "manifest.json" if path.is_dir() else None
    if f is None or not f.exists():
        return None
    try:
        return dict(orjson.loads(f.read_bytes()))
    except (orjson.JSONDecodeError, OSError):
        return None


def _cluster_examples(dataset: Path, keys: set[str], per: int = 2) -> dict[str, list[str]]:
    """Dropped texts of the biggest clusters, from the drops log."""
    out: dict[str, list[str]] = {}
    log = dataset / "drops.jsonl"
    if not keys or not log.exists():
        return out
    with open(log, "rb") as fh:
        for line in fh:
            d = orjson.loads(line).get("detail") or {}
            k = d.get("cluster")
            if k in keys and len(out.setdefault(k, [])) < per and d.get("text"):
                out[k].append(f"{d['text']} (類似度 {d.get('similarity')})")
    return out


def write_report(dataset: str | Path, out_dir: str | Path | None = None, split: str = "train") -> Path:
    """Write report.md and its PNGs into out_dir (default DATASET/report); returns report.md."""
    dataset = Path(dataset) if Path(dataset).exists() else dataset
    out = Path(out_dir) if out_dir else Path(dataset) / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(dataset, split)
    plt = _plt()
    charts: list[tuple[str, str]] = []
    lines = [f"# データ品質レポート: {data['name']}", "", f"- レコード数: {data['rows']:,}"]

    if data["rows"]:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        import numpy as np

        both = data["q_len"] + data["a_len"]
        edges = np.histogram_bin_edges(both, bins=min(60, max(10, (max(both) - min(both)) // 5 + 1)))
        ax.hist(data["q_len"], bins=edges, alpha=0.6, label="質問 (question)")  # shared edges: comparable bars
        ax.hist(data["a_len"], bins=edges, alpha=0.6, label="回答 (answer)")
        ax.set_title("文字数の分布 (length in characters)")
        ax.set_xlabel("文字数")
        ax.set_ylabel("レコード数")
        ax.legend()
        charts.append(("文字数の分布", _save(plt, fig, out / "lengths.png")))
        lines.append(f"- 質問の文字数: 中央値 {statistics.median(data['q_len']):.0f}、回答: 中央値 "
                     f"{statistics.median(data['a_len']):.0f}")

    if data["scores"]:
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        ax.hist(data["scores"], bins=[1 + i * 0.25 for i in range(17)], color="#55A868", edgecolor="white")
        ax.set_title("LLM審査スコアの分布 (judge score, 1-5)")
        ax.set_xlabel("スコア")
        ax.set_ylabel("レコード数")
        charts.append(("審査スコア", _save(plt, fig, out / "scores.png")))
        lines.append(f"- 審査スコア: 平均 {statistics.fmean(data['scores']):.2f}（{len(data['scores']):,} 件）")

    if data["nouns"]:
        top = data["nouns"].most_common(25)
        charts.append(("頻出名詞", _bar(plt, [w for w, _ in top], [c for _, c in top],
                                        f"頻出名詞 上位25（先頭 {data['noun_rows']:,} 件中の出現レコード数）",
                                        out / "nouns.png", "レコード数")))

    manifest = data["manifest"] or {}
    dropped = manifest.get("dropped") or {}
    if dropped:
        items = sorted(dropped.items(), key=lambda kv: -kv[1])
        charts.append(("除外理由", _bar(plt, [k for k, _ in items], [v for _, v in items],
                                        f"除外されたレコード（理由別、合計 {sum(dropped.values()):,}）",
                                        out / "drops.png", "レコード数")))
        lines.append(f"- 入力 {manifest.get('input_rows', 0):,} 件 → 出力 {manifest.get('output_rows', 0):,} 件")
    dedup = manifest.get("dedup") or {}
    clusters = dedup.get("biggest_clusters") or []
    if clusters:
        sizes = Counter()
        log = Path(dataset) / "drops.jsonl"
        if log.exists():
            per: Counter[str] = Counter()
            with open(log, "rb") as fh:
                for line in fh:
                    if b'"cluster"' in line:
                        per[orjson.loads(line)["detail"]["cluster"]] += 1
            sizes = Counter(v + 1 for v in per.values())
        if sizes:
            xs = sorted(sizes)
            fig, ax = plt.subplots(figsize=(7.5, 3.2))
            ax.bar([str(x) for x in xs], [sizes[x] for x in xs], color="#C44E52")
            ax.set_title("重複クラスタの大きさ (near-duplicate cluster sizes)")
            ax.set_xlabel("クラスタ内のレコード数")
            ax.set_ylabel("クラスタ数")
            charts.append(("重複クラスタ", _save(plt, fig, out / "clusters.png")))
        examples = _cluster_examples(Path(dataset), {k for k, _ in clusters[:5]})
        lines += ["", "## 大きな重複クラスタ（残したレコードと除外した例）", ""]
        for key, size in clusters[:5]:
            kept = data["kept_texts"].get(key, "(後のステップで除外され、出力にはありません)")
            lines.append(f"- **{size} 件** 残したもの `{key[:12]}`: {kept}")
            for ex in examples.get(key, []):
                lines.append(f"    - 除外: {ex}")

    if manifest.get("by_step"):
        lines += ["", "## ステップ別", "", "| ステップ | 入力 | 除外 | 出力 |", "|---|---:|---:|---:|"]
        for name, c in manifest["by_step"].items():
            lines.append(f"| {name} | {c['in']:,} | {c['dropped']:,} | {c['out']:,} |")
    if dropped:
        lines += ["", "## 除外理由", "", "| 理由 | 件数 |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1])]
    lines += [""]
    for title, name in charts:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "charts.json").write_bytes(orjson.dumps([{"title": t, "file": n} for t, n in charts]))
    return path
