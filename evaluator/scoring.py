"""Task scores from per-sample results: plain means, and Heron-Bench's ratio of judge means.

Heron-Bench (as Turing and llm-jp-eval-mm define it): within each category the model's mean
judge score divided by the reference answer's mean judge score, times 100; the headline is the
mean over categories. Judgements that could not be parsed are left out of both means and
counted apart (`unparseable`), unlike llm-jp-eval-mm, which averages them in as -1.
"""

from __future__ import annotations

from typing import Any

from synthgen.evaluator.metrics import mean

HERON_CATEGORIES = ("conv", "detail", "complex")


def heron(samples: list[dict[str, Any]]) -> dict[str, Any]:
    by_cat: dict[str, tuple[list[int], list[int]]] = {}
    unparseable = unjudged = 0
    for s in samples:
        j = s.get("judgement")
        if not j:
            unjudged += 1
            continue
        if j.get("scores") is None:
            unparseable += 1
            continue
        model, ref = by_cat.setdefault(s.get("category") or "", ([], []))
        model.append(j["scores"]["score_b"])
        ref.append(j["scores"]["score_a"])
    out: dict[str, Any] = {"categories": {}}
    ratios = []
    for cat in [*HERON_CATEGORIES, *sorted(set(by_cat) - set(HERON_CATEGORIES))]:
        if cat not in by_cat:
            continue
        model, ref = by_cat[cat]
        ratio = 100 * mean(model) / max(mean(ref), 0.01)  # type: ignore[operator]
        out["categories"][cat] = {"score": ratio, "model_mean": mean(model), "reference_mean": mean(ref), "n": len(model)}
        ratios.append(ratio)
    out["heron"] = mean(ratios)
    out["judged"] = sum(c["n"] for c in out["categories"].values())
    out["unparseable"] = unparseable
    out["unjudged"] = unjudged
    return out


def task_metrics(samples: list[dict[str, Any]], judge_kind: str | None) -> dict[str, Any]:
    """Means over a task's samples; each metric says how many samples it covers."""
    metrics: dict[str, Any] = {}
    rouge = [s["rouge_l"] for s in samples if s.get("rouge_l") is not None]
    if rouge:
        metrics["rouge_l"] = mean(rouge)
    exact = [s["exact"] for s in samples if s.get("exact") is not None]
    if exact:
        metrics["exact"] = 100 * mean(exact)  # type: ignore[operator]
        metrics["exact_n"] = len(exact)
    if judge_kind == "heron":
        metrics.update(heron(samples))
    elif judge_kind == "answer":
        judged = [s["judgement"]["scores"]["score"] for s in samples
                  if s.get("judgement") and s["judgement"].get("scores")]
        metrics["judge"] = mean(judged)
        metrics["judged"] = len(judged)
        metrics["unparseable"] = sum(1 for s in samples if s.get("judgement") and s["judgement"].get("error") == "unparseable")
        metrics["unjudged"] = sum(1 for s in samples if not s.get("judgement"))
    return metrics


def headline(metrics: dict[str, Any], preferred: str = "rouge_l") -> tuple[str, float | None]:
    """The one number a task is charted by (0-100 scale): the task's own headline when it was
    computed, else the first of heron, Rouge-L, exact match, judge (1-5 scaled to 0-100)."""
    for name in (preferred, "heron", "rouge_l", "exact"):
        if metrics.get(name) is not None:
            return name, metrics[name]
    if metrics.get("judge") is not None:
        return "judge", 20 * metrics["judge"]
    return "none", None
