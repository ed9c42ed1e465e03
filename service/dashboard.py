"""Server-rendered pages at `/`: the job list with live progress, and a job page with
failures by reason and a gallery of samples (images beside their conversation), so people
can judge quality by eye. Pages refresh themselves while a job is live; no JS framework.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from synthgen.quality.post import chart_path, quality_view
from synthgen.service.api.auth import COOKIE, key_ok, presented_key
from synthgen.service.api.jobs import get_job, image_response, preview
from synthgen.service.api.schemas import job_out
from synthgen.spec import JobState

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)
LIVE = ("queued", "running")


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    secs = (datetime.now(UTC) - value).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{int(secs)}s ago"


templates.env.filters["ago"] = _ago


def _authorised(request: Request) -> bool:
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.lower().startswith("bearer ") else None
    return key_ok(request, token or presented_key(request, None))


def _guard(request: Request) -> RedirectResponse | None:
    if _authorised(request):
        return None
    return RedirectResponse("/login", status_code=303)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, status: Annotated[str | None, Query(max_length=16)] = None) -> Response:
    if (redirect := _guard(request)) is not None:
        return redirect
    store = request.app.state.store
    jobs, total = store.list(status=status or None, limit=100)
    items = [job_out(j, request.app.state.root_prefix) for j in jobs]
    return templates.TemplateResponse(request, "jobs.html", {
        "jobs": items, "total": total, "status": status or "", "counts": store.counts_by_status(), "states": get_args(JobState),
        "live": any(j.status in LIVE for j in items)})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, offset: Annotated[int, Query(ge=0)] = 0) -> Response:
    if (redirect := _guard(request)) is not None:
        return redirect
    row = get_job(request, job_id)
    job = job_out(row, request.app.state.root_prefix)
    page = preview(row, offset, 12, base="")
    samples = [_sample(offset + i, row) for i, row in enumerate(page.items)]
    failures = sorted(job.progress.failures_by_reason.items(), key=lambda kv: -kv[1])
    return templates.TemplateResponse(request, "job.html", {
        "job": job, "samples": samples, "total_rows": page.total, "offset": offset, "page_size": 12,
        "failures": failures, "live": job.status in LIVE, "quality": quality_view(row.out_dir),
        "spec_json": json.dumps(job.spec, ensure_ascii=False, indent=2)})


@router.get("/jobs/{job_id}/quality/{name}")
def job_quality_chart(request: Request, job_id: str, name: str) -> Response:
    """A PNG of the job's curation report (synthgen.quality)."""
    if not _authorised(request):
        raise HTTPException(401, "login required")
    path = chart_path(get_job(request, job_id).out_dir, name)
    if path is None:
        raise HTTPException(404, "no such chart")
    return FileResponse(path, media_type="image/png")


@router.get("/jobs/{job_id}/records/{index}/images/{k}")
def job_image(request: Request, job_id: str, index: int, k: int) -> Response:
    if not _authorised(request):
        raise HTTPException(401, "login required")
    return image_response(get_job(request, job_id), index, k)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, failed: bool = False) -> Response:
    return templates.TemplateResponse(request, "login.html", {"failed": failed})


@router.post("/login")
async def login(request: Request) -> Response:
    """Form login for the dashboard: the key goes into an HttpOnly, SameSite=Strict cookie
    that authorises reads only (see auth.presented_key)."""
    body = await request.body()
    key = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0]
    if not key_ok(request, key):
        return RedirectResponse("/login?failed=true", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("text"))
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _sample(index: int, row: dict[str, Any]) -> dict[str, Any]:
    """A row laid out for the gallery: its images, its conversation, its other fields."""
    images: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            if set(value) == {"image_url"}:
                images.append(value["image_url"])
                return
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(row)
    messages = row.get("messages") or row.get("conversations") or []
    turns = [{"role": str(m.get("role", m.get("from", ""))), "text": _text_of(m.get("content", m.get("value")))}
             for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    fields = []
    for key, value in row.items():
        if key in ("messages", "conversations", "key"):
            continue
        if isinstance(value, dict | list):
            if any(isinstance(v, dict) and "image_url" in v for v in (value if isinstance(value, list) else [value])):
                continue
            shown = json.dumps(value, ensure_ascii=False)
        else:
            shown = str(value)
        fields.append((key, shown[:300] + ("…" if len(shown) > 300 else "")))
    return {"index": index, "key": row.get("key", ""), "images": images, "turns": turns, "fields": fields}


from synthgen.service import dashboard_eval  # noqa: E402  (the /evaluations page)

router.include_router(dashboard_eval.router)
