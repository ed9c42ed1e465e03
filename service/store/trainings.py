"""Training runs: a row per run; the trainer process itself reports through its run folder."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, insert, select, update

from synthgen.service.store.jobs import JobStore, new_job_id

__all__ = ["create", "get", "list_page", "new_job_id", "set_state"]
from synthgen.service.store.models import Training

TRAININGS = Training.__table__


def create(store: JobStore, *, config: dict[str, Any], run_dir: str, training_id: str | None = None) -> dict[str, Any]:
    now = time.time()
    row = {"id": training_id or new_job_id(), "status": "starting", "config": config, "run_dir": run_dir, "pid": None,
           "created_at": now, "updated_at": now, "error": None}
    with store.write() as conn:
        conn.execute(insert(TRAININGS).values(**row))
    return row


def get(store: JobStore, training_id: str) -> dict[str, Any] | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(TRAININGS).where(TRAININGS.c.id == training_id)).mappings().first()
    return dict(row) if row else None


def list_page(store: JobStore, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    with store.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(TRAININGS)).scalar() or 0
        rows = conn.execute(select(TRAININGS).order_by(TRAININGS.c.created_at.desc()).limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()], total


def set_state(store: JobStore, training_id: str, **values: Any) -> None:
    with store.write() as conn:
        conn.execute(update(TRAININGS).where(TRAININGS.c.id == training_id).values(updated_at=time.time(), **values))
