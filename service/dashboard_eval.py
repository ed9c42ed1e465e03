"""Dashboard page `/evaluations`: every evaluation with its state and headline scores, and one chart
comparing the finished ones side by side (the latest few), so "did the new data help" is a glance."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from synthgen.service.api.evaluations import FOLDER, list_evaluations

router = APIRouter(include_in_schema=False)
CHART_RUNS = 6


def _finished_reports(root: Path) -> list[dict]:
    from synthgen.evaluator.report import load_report

    out = []
    for ev in list_evaluations(root):
        if ev.report and len(out) < CHART_RUNS:
            try:
                out.append(load_report(root / FOLDER / ev.id))
            except (OSError, ValueError):
                continue
    return list(reversed(out))  # oldest first, as the runs happened


@router.get("/evaluations", response_class=HTMLResponse)
def evaluations_page(request: Request) -> Response:
    from synthgen.service.dashboard import _guard, templates

    if (redirect := _guard(request)) is not None:
        return redirect
    items = list_evaluations(request.app.state.root)
    return templates.TemplateResponse(request, "evaluations.html", {
        "evaluations": items, "has_chart": any(e.report for e in items),
        "live": any(e.state in ("running", "waiting") for e in items)})


@router.get("/evaluations/chart.png")
def evaluations_chart(request: Request) -> Response:
    from synthgen.evaluator.report import chart
    from synthgen.service.dashboard import _authorised

    if not _authorised(request):
        raise HTTPException(401, "login required")
    root: Path = request.app.state.root
    reports = _finished_reports(root)
    if not reports:
        raise HTTPException(404, "no finished evaluation yet")
    path = root / FOLDER / ".dashboard-chart.png"
    chart(reports, path, title="latest evaluations, headline score per task (0–100)")
    return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-store"})
