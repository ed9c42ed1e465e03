"""The job queries: create, list, claim, heartbeat, finish, cancel, re-queue.

Every state change is one guarded UPDATE (`... WHERE id = ? AND status = 'queued'`), so
two workers, or a worker and the API, can race on a row and exactly one wins, on SQLite
and Postgres alike, without SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from synthgen.engine.snapshot import RunSnapshot
from synthgen.service.store.db import connect, make_private, migrate
from synthgen.service.store.models import Job, JobSecretSpec
from synthgen.spec import FINAL_JOB_STATES

JOBS = Job.__table__
SPECS = JobSecretSpec.__table__


_ids = random.Random()  # seeded from os.urandom once per process


def new_job_id() -> str:
    """32 hex chars: milliseconds, then 80 random bits. Sortable by creation, and unlike
    uuid4 it makes no getrandom() call per request (a GIL release the event loop may wait
    seconds' fractions to get back on a busy machine). Ids are names, not credentials."""
    return f"{time.time_ns() // 1_000_000:012x}{_ids.getrandbits(80):020x}"


@dataclass(frozen=True)
class JobRow:
    """One `jobs` row as plain values (SQLAlchemy Core: a third of the ORM's cost per read)."""

    id: str
    generator: str
    status: str
    spec: dict[str, Any]
    out_dir: str
    n: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    worker_id: str | None
    heartbeat_at: float | None
    attempts: int
    cancel_requested: bool
    records: int
    failed: int
    tokens: int
    progress: RunSnapshot | None
    error: str | None


_JOB_FIELDS = [f.name for f in fields(JobRow)]


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
        # SQLite has one writer at a time and its busy handler backs off by sleeping, so
        # threads of one process queue on a lock instead (no sleeps, short tails); other
        # processes still meet the file lock and busy_timeout. Postgres needs neither.
        self._serialize = self.local = engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock()
        self._pending: queue.SimpleQueue[tuple[JobRow, str, Future[JobRow]]] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction. On SQLite it starts with the database's write lock already
        held (BEGIN IMMEDIATE), polled for every millisecond: SQLite's own busy handler sleeps
        in steps of up to 100 ms, which became the API's tail latency (job inserts, cancels)
        while a worker in another process was writing progress."""
        if not self._serialize:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            _begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @classmethod
    def open(cls, url: str, *, run_migrations: bool = True) -> JobStore:
        engine = connect(url)
        if run_migrations:
            migrate(engine)
        make_private(engine)
        return cls(engine)

    # -- API side ------------------------------------------------------------------------
    def create(self, *, generator: str, public_spec: dict[str, Any], secret_spec_json: str, out_dir: str,
               n: int, job_id: str | None = None) -> JobRow:
        return self.create_soon(generator=generator, public_spec=public_spec, secret_spec_json=secret_spec_json,
                                out_dir=out_dir, n=n, job_id=job_id).result()

    def create_soon(self, *, generator: str, public_spec: dict[str, Any], secret_spec_json: str, out_dir: str,
                    n: int, job_id: str | None = None) -> Future[JobRow]:
        """Queue the insert for the group-commit thread; the future resolves once it is durable.

        Many API requests arriving together become one transaction, so a burst of POSTs pays
        for one commit, and no request thread waits on the database's write lock.
        """
        now = time.time()
        row = JobRow(id=job_id or new_job_id(), generator=generator, status="queued", spec=public_spec,
                     out_dir=out_dir, n=n, created_at=now, updated_at=now, started_at=None, finished_at=None,
                     worker_id=None, heartbeat_at=None, attempts=0, cancel_requested=False, records=0, failed=0,
                     tokens=0, progress=None, error=None)
        done: Future[JobRow] = Future()
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_batches, name="jobstore-writer", daemon=True)
                self._writer.start()
        self._pending.put((row, secret_spec_json, done))
        return done

    def _write_batches(self) -> None:
        while True:
            batch = [self._pending.get()]
            while len(batch) < 500:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            try:
                self._insert_batch(batch)
            except Exception as exc:
                if len(batch) == 1:
                    batch[0][2].set_exception(exc)
                    continue
                # One bad row must not fail the requests grouped with it: insert them one by one.
                for item in batch:
                    try:
                        self._insert_batch([item])
                    except Exception as one:
                        item[2].set_exception(one)
                    else:
                        item[2].set_result(item[0])
            else:
                for row, _, fut in batch:
                    fut.set_result(row)

    def _insert_batch(self, batch: list[tuple[JobRow, str, Future[JobRow]]]) -> None:
        """One transaction for the batch (`write` waits for SQLite's lock without its sleeps)."""
        jobs = [{k: getattr(r, k) for k in _JOB_FIELDS} for r, _, _ in batch]
        specs = [{"job_id": r.id, "spec_json": sj} for r, sj, _ in batch]
        with self.write() as conn:
            conn.execute(insert(JOBS), jobs)
            conn.execute(insert(SPECS), specs)

    def get(self, job_id: str) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).mappings().first()
        return _job_row(row) if row else None

    def list(self, *, status: str | None = None, generator: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[JobRow], int]:
        q = select(JOBS)
        count = select(func.count()).select_from(JOBS)
        if status:
            q, count = q.where(JOBS.c.status == status), count.where(JOBS.c.status == status)
        if generator:
            q, count = q.where(JOBS.c.generator == generator), count.where(JOBS.c.generator == generator)
        with self.engine.connect() as conn:
            total = conn.execute(count).scalar() or 0
            rows = conn.execute(q.order_by(JOBS.c.created_at.desc(), JOBS.c.id).limit(limit).offset(offset)).mappings()
            return [_job_row(r) for r in rows], total

    def out_in_use(self, out_dir: str) -> bool:
        with self.engine.connect() as s:
            q = select(Job.id).where(Job.out_dir == out_dir, Job.status.in_(("queued", "running"))).limit(1)
            return s.scalar(q) is not None

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or ask a running one's worker to stop; returns the new status."""
        now = time.time()
        with self.write() as s:
            done = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                status="cancelled", finished_at=now, updated_at=now)).rowcount
            if done:
                _forget_secrets(s, job_id)
                return "cancelled"
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(
                cancel_requested=True, updated_at=now))
            return s.execute(select(JOBS.c.status).where(JOBS.c.id == job_id)).scalar()

    def counts_by_status(self) -> dict[str, int]:
        with self.engine.connect() as s:
            return {status: count for status, count in s.execute(select(Job.status, func.count()).group_by(Job.status))}

    def totals(self) -> dict[str, int]:
        with self.engine.connect() as s:
            row = s.execute(select(func.coalesce(func.sum(Job.records), 0), func.coalesce(func.sum(Job.failed), 0),
                                   func.coalesce(func.sum(Job.tokens), 0))).one()
        return {"records": int(row[0]), "failed": int(row[1]), "tokens": int(row[2])}

    # -- worker side ---------------------------------------------------------------------
    def claim(self, worker_id: str) -> Claimed | None:
        """Take the oldest queued job; a lost race just moves on to the next candidate."""
        with self.engine.connect() as s:
            candidates = s.scalars(select(Job.id).where(Job.status == "queued")
                                   .order_by(Job.created_at, Job.id).limit(5)).all()
        for job_id in candidates:
            now = time.time()
            with self.write() as s:
                won = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                    status="running", worker_id=worker_id, heartbeat_at=now, updated_at=now,
                    started_at=func.coalesce(Job.started_at, now), attempts=Job.attempts + 1)).rowcount
                if not won:
                    continue
                row = s.execute(select(JOBS.c.out_dir, JOBS.c.attempts, SPECS.c.spec_json)
                                .join(SPECS, SPECS.c.job_id == JOBS.c.id).where(JOBS.c.id == job_id)).one()
                return Claimed(id=job_id, spec_json=row.spec_json, out_dir=row.out_dir, attempts=row.attempts)
        return None

    def heartbeat(self, job_id: str, worker_id: str, progress: RunSnapshot | None) -> tuple[bool, bool]:
        """Returns (still ours, cancel requested). Not ours = re-queued after a missed heartbeat."""
        now = time.time()
        values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
        if progress is not None:
            values.update(_counters(progress))
        with self.write() as s:
            ours = s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                               Job.status == "running").values(**values)).rowcount
            cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
        return bool(ours), cancel

    def finish(self, job_id: str, worker_id: str, status: str, *, progress: RunSnapshot | None = None,
               error: str | None = None) -> bool:
        assert status in FINAL_JOB_STATES
        now = time.time()
        values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, "heartbeat_at": now,
                                  "error": error}
        if progress is not None:
            values.update(_counters(progress))
        with self.write() as s:
            done = bool(s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                                    Job.status == "running").values(**values)).rowcount)
            if done:
                _forget_secrets(s, job_id, keep_publish=status == "succeeded")
            return done

    def forget_secrets(self, job_id: str, *, keep_publish: bool = False) -> None:
        """Drop a job's stored API keys (and its Hub token unless `keep_publish`): a finished job
        needs none, a retried one is given them again. The publish step calls this when done."""
        with self.write() as s:
            _forget_secrets(s, job_id, keep_publish=keep_publish)

    def retry(self, job_id: str, spec_json: str | None = None) -> bool:
        """Queue a failed or incomplete job again; its worker resumes from the shards already
        written. `spec_json` replaces the stored spec (secrets given anew). One guarded UPDATE."""
        now = time.time()
        with self.write() as s:
            busy = select(JOBS.c.id).where(JOBS.c.out_dir == select(JOBS.c.out_dir).where(
                JOBS.c.id == job_id).scalar_subquery(), JOBS.c.status.in_(("queued", "running")),
                JOBS.c.id != job_id).limit(1)
            if s.execute(busy).first() is not None:
                return False
            done = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(RETRYABLE)).values(
                status="queued", worker_id=None, heartbeat_at=None, finished_at=None, error=None,
                cancel_requested=False, updated_at=now)).rowcount
            if done and spec_json is not None:
                s.execute(update(SPECS).where(SPECS.c.job_id == job_id).values(spec_json=spec_json))
            return bool(done)

    def secret_spec(self, job_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(SPECS.c.spec_json).where(SPECS.c.job_id == job_id)).scalar()

    def release(self, job_id: str, worker_id: str, progress: RunSnapshot | None = None) -> bool:
        """Hand a job back to the queue (SIGTERM): another worker resumes it from its checkpoints."""
        now = time.time()
        values: dict[str, Any] = {"status": "queued", "worker_id": None, "heartbeat_at": None, "updated_at": now}
        if progress is not None:
            values.update(_counters(progress))
        with self.write() as s:
            return bool(s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                                    Job.status == "running").values(**values)).rowcount)

    def requeue_stale(self, timeout_s: float) -> int:
        """Jobs whose worker stopped heartbeating go back to the queue (or end, if cancelled)."""
        now = time.time()
        cutoff = now - timeout_s
        with self.write() as s:
            stale = (Job.status == "running") & (Job.heartbeat_at < cutoff)
            ended = s.scalars(select(Job.id).where(stale, Job.cancel_requested.is_(True))).all()
            s.execute(update(Job).where(stale, Job.cancel_requested.is_(True)).values(
                status="cancelled", finished_at=now, updated_at=now, worker_id=None))
            for job_id in ended:
                _forget_secrets(s, job_id)
            return s.execute(update(Job).where(stale).values(
                status="queued", worker_id=None, heartbeat_at=None, updated_at=now)).rowcount

    def dispose(self) -> None:
        self.engine.dispose()


RETRYABLE = ("failed", "incomplete")


def _forget_secrets(conn: Connection, job_id: str, *, keep_publish: bool = False) -> None:
    """Null the API keys (and the Hub token) in a job's stored spec."""
    raw = conn.execute(select(SPECS.c.spec_json).where(SPECS.c.job_id == job_id)).scalar()
    if not raw:
        return
    spec = json.loads(raw)
    changed = False
    quality_roles = [q.get("role") for q in spec.get("quality") or [] if isinstance(q, dict)]
    for role in [*(spec.get("roles") or {}).values(), *quality_roles]:
        if isinstance(role, dict) and role.get("api_key"):
            role["api_key"] = None
            changed = True
    publish = spec.get("publish")
    if not keep_publish and isinstance(publish, dict) and publish.get("token"):
        publish["token"] = None
        changed = True
    if changed:
        conn.execute(update(SPECS).where(SPECS.c.job_id == job_id).values(
            spec_json=json.dumps(spec, ensure_ascii=False)))


LOCK_WAIT_S = 30.0


def _begin_immediate(conn: Connection) -> None:
    """Take SQLite's write lock, polling every millisecond (busy_timeout=1 makes each try return
    at once) for up to LOCK_WAIT_S; then no statement of the transaction can meet a busy lock."""
    deadline = time.monotonic() + LOCK_WAIT_S
    conn.exec_driver_sql("PRAGMA busy_timeout=1")
    try:
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                conn.rollback()
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
    finally:
        conn.exec_driver_sql("PRAGMA busy_timeout=30000")


def _counters(progress: RunSnapshot) -> dict[str, Any]:
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in progress.usage.values())
    return {"progress": progress.model_dump(mode="json"), "records": progress.records,
            "failed": progress.failed, "tokens": tokens}


def _job_row(row: Any) -> JobRow:
    values = dict(row)
    if values.get("progress") is not None:
        values["progress"] = RunSnapshot.model_validate(values["progress"])
    return JobRow(**values)
