"""The job queries: create, list, claim, heartbeat, finish, cancel, re-queue.

Every state change is one guarded UPDATE (`... WHERE id = ? AND status = 'queued'`), so
two workers, or a worker and the API, can race on a row and exactly one wins, on SQLite
and Postgres alike, without SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import sessionmaker

from synthgen.service.store.db import connect, migrate
from synthgen.service.store.models import FINAL_STATUSES, Job, JobSecretSpec


@dataclass(frozen=True)
class Claimed:
    id: str
    spec_json: str
    out_dir: str
    attempts: int


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, run_migrations: bool = True) -> JobStore:
        engine = connect(url)
        if run_migrations:
            migrate(engine)
        return cls(engine)

    # -- API side ------------------------------------------------------------------------
    def create(self, *, generator: str, public_spec: dict[str, Any], secret_spec_json: str, out_dir: str,
               n: int, job_id: str | None = None) -> Job:
        now = time.time()
        job = Job(id=job_id or uuid.uuid4().hex, generator=generator, status="queued", spec=public_spec,
                  out_dir=out_dir, n=n, created_at=now, updated_at=now, attempts=0, cancel_requested=False,
                  records=0, failed=0, tokens=0)
        with self.session.begin() as s:
            s.add(job)
            s.flush()
            s.add(JobSecretSpec(job_id=job.id, spec_json=secret_spec_json))
        return job

    def get(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def list(self, *, status: str | None = None, generator: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[Job], int]:
        q = select(Job)
        count = select(func.count()).select_from(Job)
        if status:
            q, count = q.where(Job.status == status), count.where(Job.status == status)
        if generator:
            q, count = q.where(Job.generator == generator), count.where(Job.generator == generator)
        with self.session() as s:
            total = s.scalar(count) or 0
            rows = s.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
        return list(rows), total

    def out_in_use(self, out_dir: str) -> bool:
        with self.session() as s:
            q = select(Job.id).where(Job.out_dir == out_dir, Job.status.in_(("queued", "running"))).limit(1)
            return s.scalar(q) is not None

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or ask a running one's worker to stop; returns the new status."""
        now = time.time()
        with self.session.begin() as s:
            done = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                status="cancelled", finished_at=now, updated_at=now)).rowcount
            if done:
                return "cancelled"
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(
                cancel_requested=True, updated_at=now))
            job = s.get(Job, job_id)
            return job.status if job else None

    def counts_by_status(self) -> dict[str, int]:
        with self.session() as s:
            return {status: count for status, count in s.execute(select(Job.status, func.count()).group_by(Job.status))}

    def totals(self) -> dict[str, int]:
        with self.session() as s:
            row = s.execute(select(func.coalesce(func.sum(Job.records), 0), func.coalesce(func.sum(Job.failed), 0),
                                   func.coalesce(func.sum(Job.tokens), 0))).one()
        return {"records": int(row[0]), "failed": int(row[1]), "tokens": int(row[2])}

    # -- worker side ---------------------------------------------------------------------
    def claim(self, worker_id: str) -> Claimed | None:
        """Take the oldest queued job; a lost race just moves on to the next candidate."""
        with self.session() as s:
            candidates = s.scalars(select(Job.id).where(Job.status == "queued")
                                   .order_by(Job.created_at, Job.id).limit(5)).all()
        for job_id in candidates:
            now = time.time()
            with self.session.begin() as s:
                won = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                    status="running", worker_id=worker_id, heartbeat_at=now, updated_at=now,
                    started_at=func.coalesce(Job.started_at, now), attempts=Job.attempts + 1)).rowcount
                if not won:
                    continue
                job = s.get(Job, job_id)
                secret = s.get(JobSecretSpec, job_id)
                assert job is not None and secret is not None
                return Claimed(id=job.id, spec_json=secret.spec_json, out_dir=job.out_dir, attempts=job.attempts)
        return None

    def heartbeat(self, job_id: str, worker_id: str, progress: dict[str, Any] | None) -> tuple[bool, bool]:
        """Returns (still ours, cancel requested). Not ours = re-queued after a missed heartbeat."""
        now = time.time()
        values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
        if progress is not None:
            values.update(_counters(progress))
        with self.session.begin() as s:
            ours = s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                               Job.status == "running").values(**values)).rowcount
            cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
        return bool(ours), cancel

    def finish(self, job_id: str, worker_id: str, status: str, *, progress: dict[str, Any] | None = None,
               error: str | None = None) -> bool:
        assert status in FINAL_STATUSES
        now = time.time()
        values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, "heartbeat_at": now,
                                  "error": error}
        if progress is not None:
            values.update(_counters(progress))
        with self.session.begin() as s:
            return bool(s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                                    Job.status == "running").values(**values)).rowcount)

    def release(self, job_id: str, worker_id: str, progress: dict[str, Any] | None = None) -> bool:
        """Hand a job back to the queue (SIGTERM): another worker resumes it from its checkpoints."""
        now = time.time()
        values: dict[str, Any] = {"status": "queued", "worker_id": None, "heartbeat_at": None, "updated_at": now}
        if progress is not None:
            values.update(_counters(progress))
        with self.session.begin() as s:
            return bool(s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                                    Job.status == "running").values(**values)).rowcount)

    def requeue_stale(self, timeout_s: float) -> int:
        """Jobs whose worker stopped heartbeating go back to the queue (or end, if cancelled)."""
        now = time.time()
        cutoff = now - timeout_s
        with self.session.begin() as s:
            stale = (Job.status == "running") & (Job.heartbeat_at < cutoff)
            s.execute(update(Job).where(stale, Job.cancel_requested.is_(True)).values(
                status="cancelled", finished_at=now, updated_at=now, worker_id=None))
            return s.execute(update(Job).where(stale).values(
                status="queued", worker_id=None, heartbeat_at=None, updated_at=now)).rowcount

    def dispose(self) -> None:
        self.engine.dispose()


def _counters(progress: dict[str, Any]) -> dict[str, Any]:
    tokens = sum(int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0))
                 for u in (progress.get("usage") or {}).values())
    return {"progress": progress, "records": int(progress.get("records", 0)),
            "failed": int(progress.get("failed", 0)), "tokens": tokens}
