"""`synthgen eval compare A B`: did the new data help? Per-task differences with a paired bootstrap CI.

Both runs answered the same samples, so the samples are paired: each bootstrap draw resamples
sample ids (with replacement) and recomputes the task's metric for both runs on the same draw,
so the interval reflects which questions happened to be in the set, not run-to-run noise the
pairing removes. Heron-Bench's score is a ratio of category means, recomputed per draw the same
way. A difference whose 95% interval excludes 0 is marked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from synthgen.evaluator import scoring

METRICS = ("heron", "rouge_l", "exact", "judge")


def _value(sample: dict[str, Any], metric: str) -> float | None:
    if metric == "rouge_l":
        return sample.get("rouge_l")
    if metric == "exact":
        v = sample.get("exact")
        return None if v is None else 100.0 * v
    if metric == "judge":
        j = sample.get("judgement") or {}
        return (j.get("scores") or {}).get("score")
    raise ValueError(metric)


def _metric_fn(metric: str) -> Callable[[list[dict[str, Any]]], float | None]:
    if metric == "heron":
        return lambda rows: scoring.heron(rows)["heron"]

    def mean_of(rows: list[dict[str, Any]]) -> float | None:
        vals = [v for r in rows if (v := _value(r, metric)) is not None]
        return float(np.mean(vals)) if vals else None

    return mean_of


def compare_task(a: dict[str, Any], b: dict[str, Any], metric: str, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any] | None:
    fn = _metric_fn(metric)
    rows_a = {s["id"]: s for s in a["samples"]}
    rows_b = {s["id"]: s for s in b["samples"]}
    ids = [i for i in rows_a if i in rows_b]
    if not ids:
        return None
    pa, pb = [rows_a[i] for i in ids], [rows_b[i] for i in ids]
    va, vb = fn(pa), fn(pb)
    if va is None or vb is None:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    if metric == "heron":
        diffs = []
        for d in draws:
            x, y = fn([pa[k] for k in d]), fn([pb[k] for k in d])
            if x is not None and y is not None:
                diffs.append(y - x)
        diff_arr = np.asarray(diffs)
    else:
        xa = np.array([np.nan if (v := _value(r, metric)) is None else v for r in pa], dtype=float)
        xb = np.array([np.nan if (v := _value(r, metric)) is None else v for r in pb], dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw with no scored sample: nan, dropped below
            diff_arr = np.nanmean(xb[draws], axis=1) - np.nanmean(xa[draws], axis=1)
        diff_arr = diff_arr[~np.isnan(diff_arr)]
    lo, hi = (float(np.percentile(diff_arr, 2.5)), float(np.percentile(diff_arr, 97.5))) if len(diff_arr) else (None, None)
    return {"metric": metric, "a": va, "b": vb, "diff": vb - va, "ci95": [lo, hi], "n": len(ids),
            "significant": lo is not None and hi is not None and (lo > 0 or hi < 0)}


def compare(a: dict[str, Any], b: dict[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"a": a["label"], "b": b["label"], "n_boot": n_boot, "tasks": {}}
    for name, ta in a["tasks"].items():
        tb = b["tasks"].get(name)
        if tb is None:
            continue
        rows = [r for m in METRICS if m in ta["metrics"] and m in tb["metrics"]
                and (r := compare_task(ta, tb, m, n_boot, seed)) is not None]
        out["tasks"][name] = {"title": ta["title"], "comparisons": rows}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# {result['b']} vs {result['a']}", "",
             f"Difference = B − A on the samples both runs answered; 95% CI from a paired bootstrap "
             f"({result['n_boot']} draws). ✱ = the interval excludes 0.", "",
             "| task | metric | A | B | B − A | 95% CI | n |", "|---|---|---:|---:|---:|---|---:|"]
    for t in result["tasks"].values():
        for c in t["comparisons"]:
            lo, hi = c["ci95"]
            ci = "–" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]"
            mark = " ✱" if c["significant"] else ""
            lines.append(f"| {t['title']} | {c['metric']} | {c['a']:.2f} | {c['b']:.2f} | {c['diff']:+.2f}{mark} | {ci} | {c['n']} |")
    return "\n".join(lines) + "\n"
