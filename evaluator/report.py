"""Reports: report.json (every answer, score and judgement), report.md, and a PNG chart.

The Markdown table puts our run beside llm-jp-eval-mm's published scores for known models
(published_scores.json, with its source); the judge score sits beside Rouge-L wherever both
apply, because Rouge-L rewards answers written in the reference's style, not better answers.
"""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from synthgen.evaluator.scoring import HERON_CATEGORIES

# our task name -> (published task key, published metric, our metric)
PUBLISHED_COLUMNS = [
    ("japanese-heron-bench", "Heron", "LLM", "heron"),
    ("ja-vg-vqa-500", "VG-VQA", "Rouge", "rouge_l"),
    ("ja-vg-vqa-500", "VG-VQA", "LLM", "judge"),
    ("ja-vlm-bench-in-the-wild", "JVB-ItW", "Rouge", "rouge_l"),
    ("ja-vlm-bench-in-the-wild", "JVB-ItW", "LLM", "judge"),
    ("jdocqa", "JDocQA", "LLM", "judge"),
]


def published() -> dict[str, Any]:
    return json.loads((files("synthgen.evaluator") / "published_scores.json").read_text(encoding="utf-8"))


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any], examples: int = 2) -> str:
    gen = report["generation"]
    judge = report.get("judge")
    lines = [f"# Evaluation: {report['label']}", "",
             f"- model under test: `{report['model']['name']}` ({report['model']['engine']}"
             + (f", {report['model']['base_url']}" if report["model"].get("base_url") else "") + ")",
             f"- judge: `{judge['name']}` ({judge['engine']}; structured output "
             f"{'off (server refused it)' if judge.get('structured_fallback') else 'on' if judge['structured'] else 'off'}"
             f", {judge['retries']} re-asks on unparseable replies)" if judge else "- judge: none (judge scores not computed)",
             f"- generation: max_tokens={gen['max_tokens']}, temperature={gen['temperature']}, top_p={gen.get('top_p')}, "
             f"seed={gen.get('seed')}",
             f"- run: {report['created_at']}, {report.get('seconds', 0):.1f} s, synthgen {report['synthgen_version']}", "",
             "| task | n | Rouge-L | judge (1–5) | Heron | exact | answer failures | judge unparseable |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in report["tasks"].values():
        m = t["metrics"]
        exact = f"{m['exact']:.2f} (n={m['exact_n']})" if m.get("exact") is not None else "–"
        lines.append(f"| {t['title']} | {t['n']} | {_fmt(m.get('rouge_l'))} | {_fmt(m.get('judge'))} | "
                     f"{_fmt(m.get('heron'))} | {exact} | {t['answers_failed']} | {m.get('unparseable', '–')} |")
    heron = report["tasks"].get("japanese-heron-bench")
    if heron and heron["metrics"].get("categories"):
        lines += ["", "Heron-Bench by category (model mean ÷ reference mean × 100; unparseable judgements left out):", "",
                  "| category | score | model mean | reference mean | judged |", "|---|---:|---:|---:|---:|"]
        cats = heron["metrics"]["categories"]
        for cat in [c for c in HERON_CATEGORIES if c in cats] + [c for c in cats if c not in HERON_CATEGORIES]:
            c = cats[cat]
            lines.append(f"| {cat} | {_fmt(c['score'])} | {_fmt(c['model_mean'])} | {_fmt(c['reference_mean'])} | {c['n']} |")
    lines += ["", *published_table([report])]
    lines += ["", "## Examples", ""]
    for t in report["tasks"].values():
        for s in t["samples"][:examples]:
            j = s.get("judgement") or {}
            scores = ", ".join(f"{k}={v}" for k, v in (j.get("scores") or {}).items()) or j.get("error") or "–"
            lines += [f"**{t['title']} · {s['id']}** — Q: {_cell(s['question'])}", "",
                      f"- reference: {_cell(s['reference'])}", f"- answer: {_cell(s['answer'])}",
                      f"- Rouge-L {_fmt(s.get('rouge_l'))}; judge {scores}"
                      + (f" — {_cell(j['reason'])}" if j.get("reason") else ""), ""]
    return "\n".join(lines) + "\n"


def published_table(reports: list[dict[str, Any]]) -> list[str]:
    """Our runs and the published models, on the columns our runs cover."""
    tasks = {name for r in reports for name in r["tasks"]}
    cols = [c for c in PUBLISHED_COLUMNS if c[0] in tasks]
    if not cols:
        return []
    pub = published()
    src = pub["source"]
    head = "| model | " + " | ".join(f"{key}/{metric}" for _, key, metric, _ in cols) + " |"
    lines = ["## Beside published scores", "", head, "|---|" + "---:|" * len(cols)]
    for r in reports:
        cells = []
        for task, _, _metric, ours in cols:
            t = r["tasks"].get(task)
            cells.append(f"**{_fmt(t['metrics'].get(ours))}**" if t and t["metrics"].get(ours) is not None else "–")
        lines.append(f"| **{_cell(r['label'])}** (this run) | " + " | ".join(cells) + " |")
    for model, scores in pub["models"].items():
        cells = [_fmt((scores.get(key) or {}).get(metric)) for _, key, metric, _ in cols]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", f"Published rows: {src['repository']} `{src['path']}` at commit {src['commit'][:7]} "
              f"(file last changed {src['file_last_changed']}). {src['note']} Our judge columns use our judge "
              "and prompts, so compare them with care; Rouge-L is computed the same way."]
    return lines


def chart(reports: list[dict[str, Any]], path: str | Path, title: str = "headline score per task (0–100)") -> Path:
    """Grouped bars: one group per task, one bar per run, each task's headline metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["font.family"] = ["DejaVu Sans", "Noto Sans CJK JP"]
    tasks: list[tuple[str, str]] = []
    for r in reports:
        for name, t in r["tasks"].items():
            if name not in [n for n, _ in tasks]:
                tasks.append((name, f"{t['title']}\n({t['headline']['metric']})"))
    width = 0.8 / max(1, len(reports))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(tasks) + 2), 4.2), dpi=110)
    for i, r in enumerate(reports):
        values = [(r["tasks"].get(name) or {}).get("headline", {}).get("value") for name, _ in tasks]
        xs = [k + (i - (len(reports) - 1) / 2) * width for k in range(len(tasks))]
        bars = ax.bar(xs, [v or 0 for v in values], width, label=r["label"])
        for bar, v in zip(bars, values, strict=True):
            ax.annotate("n/a" if v is None else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(tasks)), [label for _, label in tasks], fontsize=8)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "report.json", json.dumps(report, ensure_ascii=False, indent=1, default=str))
    _atomic_write(out_dir / "report.md", markdown(report))
    summary = {"label": report["label"], "created_at": report["created_at"], "model": report["model"],
               "headline": {name: t["headline"] for name, t in report["tasks"].items()}}
    _atomic_write(out_dir / "summary.json", json.dumps(summary, ensure_ascii=False))  # for lists: no samples
    chart([report], out_dir / "chart.png")


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    return json.loads(p.read_text(encoding="utf-8"))
