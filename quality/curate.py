"""`curate(IN, OUT, steps)`: stream a dataset through quality steps into a new dataset folder.

Steps run in the order given, each on the records the previous ones kept, one Arrow batch at
a time, so memory is bounded by the batch and the steps' own indexes (dedup hashes, noun
counts), never by the dataset. Every column is kept (the `key` included); the judge step adds
`judge_score` and `judge_reason`. Every dropped record is one line of OUT/drops.jsonl, and
OUT/manifest.json counts drops by reason and by step.

The judge step overlaps with the rest: while one batch's records wait on the judge, the next
batch is read, deduplicated and filtered, so the judge endpoint never idles between batches.
A top-fraction judge cut needs every score first; then the records are scored into a staging
folder and the cut and the later steps run on a second pass over it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.quality.config import BalanceParams, DedupParams, FilterParams, JudgeParams, step_params
from synthgen.quality.records import TextView, image_of
from synthgen.quality.sink import DROPS, DatasetWriter, DropLog, write_json
from synthgen.quality.sources import Source, open_source

MANIFEST = "manifest.json"
REFERENCE_COLUMNS = ("visible_text", "caption", "captions", "source_text")
SCORE, REASON = "judge_score", "judge_reason"


@dataclass
class Batch:
    """One Arrow batch on its way through the steps."""

    data: pa.RecordBatch
    keys: list[str]
    rows: list[dict[str, Any]]  # the columns the steps read
    qa: list[tuple[str, str]]
    alive: list[bool]
    scores: list[float | None]
    reasons: list[str | None]
    judge_task: asyncio.Task[None] | None = None


@dataclass
class StepCounts:
    entered: int = 0
    dropped: int = 0


@dataclass
class Curation:
    """What a run of the steps did; becomes the manifest."""

    steps: list[tuple[str, Any]]
    drops: DropLog
    counts: dict[str, StepCounts] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def drop(self, batch: Batch, i: int, step: str, reason: str, detail: dict[str, Any] | None = None) -> None:
        batch.alive[i] = False
        self.counts[step].dropped += 1
        self.drops.add(batch.keys[i], reason, step, detail)


def parse_steps(steps: str | list[Any]) -> list[tuple[str, Any]]:
    """'dedup,filter' or [{'step': 'judge', 'params': {...}}] -> [(name, params model)]."""
    items = [s.strip() for s in steps.split(",") if s.strip()] if isinstance(steps, str) else list(steps)
    out = []
    for item in items:
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict):
            name, params = item["step"], item.get("params") or {}
        else:  # a pydantic QualityStep
            name, params = item.step, item.params
        out.append((name, step_params(name, params)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"a step is listed twice: {names}")
    return out


# -- the steps -------------------------------------------------------------------------------
class DedupStep:
    name = "dedup"

    def __init__(self, params: DedupParams, view: TextView, workdir: Path, split: str) -> None:
        from synthgen.quality.dedup import Deduper

        self.params = params
        self.view = view
        self.dedup = Deduper(threshold=params.threshold, ngram=params.ngram, num_perm=params.num_perm,
                             bands=params.bands, image_distance=params.image_distance if params.images else -1,
                             workdir=workdir)
        self.split = split

    def index_reference(self, ref: str | Path) -> int:
        """Index an earlier dataset's records so repeats of them are dropped too."""
        src = open_source(ref, self.split)
        view = TextView.for_columns(src.column_names, list(self.view.question) or None,
                                    list(self.view.answer) or None)
        cols = [c for c in ["key", *view.columns, view.image if self.params.images else None]
                if c and c in src.column_names]
        n = 0
        for batch in src.batches(2048, cols):
            for j, row in enumerate(batch.to_pylist()):
                q, a = view.qa(row)
                key = row.get("key") or f"{src.name}#{n + j}"
                self.dedup.check(str(key), q + "\n" + a, image_of(row, view.image) if self.params.images else None,
                                 source=str(ref))
            n += batch.num_rows
        return n

    def run(self, batch: Batch, cur: Curation) -> None:
        for i, alive in enumerate(batch.alive):
            if not alive:
                continue
            q, a = batch.qa[i]
            image = image_of(batch.rows[i], self.view.image) if self.params.images else None
            m = self.dedup.check(batch.keys[i], q + "\n" + a, image)
            if m is not None:
                detail = {"cluster": m.kept_key, "kept": m.kept_key, "similarity": m.similarity,
                          "text": (q + " / " + a)[:120]}
                if m.kept_in:
                    detail["kept_in"] = m.kept_in
                cur.drop(batch, i, self.name, f"dedup_{m.kind}", detail)

    def summary(self) -> dict[str, Any]:
        s = self.dedup.stats
        return {"exact": s.exact, "near": s.near, "image": s.image, "kept": s.kept,
                "lsh_bands": self.dedup.bands, "num_perm": self.dedup.num_perm,
                "candidates_checked": s.candidates_checked, "clusters_with_drops": len(s.cluster_sizes),
                "biggest_clusters": s.biggest_clusters(20)}

    def close(self) -> None:
        self.dedup.close()


class FilterStep:
    name = "filter"

    def __init__(self, params: FilterParams) -> None:
        self.params = params

    def run(self, batch: Batch, cur: Curation) -> None:
        from synthgen.quality.filters import first_failure

        for i, alive in enumerate(batch.alive):
            if alive and (reason := first_failure(*batch.qa[i], self.params)):
                cur.drop(batch, i, self.name, reason)


class BalanceStep:
    name = "balance"

    def __init__(self, params: BalanceParams, source: Source) -> None:
        from synthgen.quality.balance import Balancer

        self.category = params.category_field if params.category_field in source.column_names else None
        counts = source.count(self.category) if self.category and params.category_cap is None else None
        self.balancer = Balancer(params, input_rows=source.num_rows or _count(source), category_counts=counts)

    def run(self, batch: Batch, cur: Curation) -> None:
        for i, alive in enumerate(batch.alive):
            if not alive:
                continue
            category = batch.rows[i].get(self.category) if self.category else None
            verdict = self.balancer.check(*batch.qa[i], None if category is None else str(category))
            if verdict is not None:
                cur.drop(batch, i, self.name, verdict[0], verdict[1])

    def summary(self) -> dict[str, Any]:
        return self.balancer.summary()


class JudgeStep:
    name = "judge"

    def __init__(self, params: JudgeParams, role: Any, view: TextView, columns: list[str]) -> None:
        from synthgen.quality.judge import Judge

        self.params = params
        self.judge = Judge(role, params)
        self.view = view
        self.reference = [c for c in REFERENCE_COLUMNS if c in columns]
        self.histogram: dict[str, int] = {}
        self.failed: dict[str, int] = {}

    def _reference(self, row: dict[str, Any]) -> str | None:
        parts = []
        for c in self.reference:
            v = row.get(c)
            if isinstance(v, dict):
                parts += [str(x) for x in v.values() if x]
            elif v:
                parts.append(str(v))
        return "\n".join(parts)[:4000] or None

    async def score_batch(self, batch: Batch) -> None:
        from synthgen.engine.errors import RequestError
        from synthgen.quality.judge import JudgeParseError

        async def one(i: int) -> None:
            q, a = batch.qa[i]
            image = image_of(batch.rows[i], self.view.image) if self.params.image_inputs else None
            if isinstance(image, dict):
                image = image.get("bytes")
            try:
                j = await self.judge.score(q, a, self._reference(batch.rows[i]), image)
            except RequestError as exc:
                batch.reasons[i] = f"!judge_request_failed:{exc.reason}"
                return
            except JudgeParseError as exc:
                batch.reasons[i] = f"!judge_unparsed:{exc}"
                return
            batch.scores[i], batch.reasons[i] = j.score, j.reason

        await asyncio.gather(*(one(i) for i, alive in enumerate(batch.alive) if alive))

    def settle(self, batch: Batch, cur: Curation, cut: Callable[[float], bool] | None) -> None:
        """After scoring: drop failures, and low scores when keeping by threshold."""
        for i, alive in enumerate(batch.alive):
            if not alive:
                continue
            reason = batch.reasons[i]
            if reason and reason.startswith("!"):
                slug, _, detail = reason[1:].partition(":")
                batch.reasons[i] = None
                cur.drop(batch, i, self.name, slug, {"error": detail[:300]})
                continue
            score = batch.scores[i]
            assert score is not None
            bucket = f"{score:.2f}"
            self.histogram[bucket] = self.histogram.get(bucket, 0) + 1
            if cut is not None and not cut(score):
                cur.drop(batch, i, self.name, "judge_low_score", {"score": score, "reason": batch.reasons[i]})

    def threshold_cut(self) -> Callable[[float], bool] | None:
        if self.params.top_fraction is not None:
            return None
        floor = self.params.min_score or 1.0
        return lambda s: s >= floor

    def summary(self) -> dict[str, Any]:
        role = self.judge.role
        return {"histogram": dict(sorted(self.histogram.items())), "min_score": self.params.min_score,
                "top_fraction": self.params.top_fraction, "model": role.model,
                "structured_output": self.judge.structured and not self.judge.structured_refused,
                "usage": role.usage.as_dict()}


def top_fraction_cut(histogram: dict[str, int], fraction: float) -> tuple[float, int]:
    """(score s, ties kept t): keep every record scoring above s and the first t scoring s,
    which keeps exactly ceil(fraction x scored) records."""
    total = sum(histogram.values())
    want = math.ceil(fraction * total)
    above = 0
    for bucket in sorted(histogram, key=float, reverse=True):
        n = histogram[bucket]
        if above + n >= want:
            return float(bucket), want - above
        above += n
    return 1.0, 0


def _count(source: Source) -> int:
    first = source.column_names[0]
    return sum(b.num_rows for b in source.batches(65536, [first]))


# -- the pipeline ------------------------------------------------------------------------------
def _key_of(name: str, index: int) -> str:
    return hashlib.blake2b(f"{name}#{index}".encode(), digest_size=16).hexdigest()


def _read(source: Source, batch_size: int, read_cols: list[str], has_key: bool,
          view: TextView, strip: tuple[str, ...] = ()) -> Iterator[Batch]:
    index = 0
    for data in source.batches(batch_size):
        if strip:  # a dataset judged before and judged again: its old scores make way
            data = data.drop_columns(list(strip))
        rows = data.select([c for c in read_cols if c in data.schema.names]).to_pylist()
        keys = ([str(r.get("key")) for r in rows] if has_key
                else [_key_of(source.name, index + j) for j in range(data.num_rows)])
        index += data.num_rows
        n = data.num_rows
        yield Batch(data, keys, rows, [view.qa(r) for r in rows], [True] * n, [None] * n, [None] * n)


def _out_columns(batch: Batch, has_key: bool, with_judge: bool, carried_judge: bool) -> list[pa.Array]:
    mask = pa.array(batch.alive, type=pa.bool_())
    cols = list(batch.data.filter(mask).columns)
    if not has_key:
        cols.insert(0, pa.array([k for k, a in zip(batch.keys, batch.alive, strict=True) if a], type=pa.string()))
    if with_judge and not carried_judge:
        cols.append(pa.array([s for s, a in zip(batch.scores, batch.alive, strict=True) if a], type=pa.float32()))
        cols.append(pa.array([r for r, a in zip(batch.reasons, batch.alive, strict=True) if a], type=pa.string()))
    return cols


async def _run_stage(source: Source, out_writer: Callable[[list[pa.Array]], None], steps: list[Any],
                     cur: Curation, *, batch_size: int, view: TextView, read_cols: list[str], has_key: bool,
                     with_judge: bool, carried_judge: bool, judge_cut: Callable[[float], bool] | None,
                     pre_cut: Callable[[Batch, Curation], None] | None = None,
                     progress: Callable[[int], None] | None = None, strip: tuple[str, ...] = ()) -> int:
    """One pass: read -> [pre_cut] -> steps before the judge -> judge (overlapped) -> steps after."""
    judge_at = next((i for i, s in enumerate(steps) if isinstance(s, JudgeStep)), None)
    before = steps if judge_at is None else steps[:judge_at]
    after = [] if judge_at is None else steps[judge_at + 1:]
    judge = None if judge_at is None else steps[judge_at]
    seen = 0

    def run_steps(batch: Batch, these: list[Any]) -> None:
        for step in these:
            cur.counts[step.name].entered += sum(batch.alive)
            step.run(batch, cur)

    def finish(batch: Batch) -> None:
        if judge is not None:
            judge.settle(batch, cur, judge_cut)
        run_steps(batch, after)
        out_writer(_out_columns(batch, has_key, with_judge, carried_judge))

    def prepare(it: Iterator[Batch]) -> Batch | None:
        batch = next(it, None)
        if batch is not None:
            if pre_cut is not None:
                pre_cut(batch, cur)
            run_steps(batch, before)
        return batch

    # With a judge, the CPU work (reading, dedup, filters, writing) runs in a worker thread so
    # the event loop keeps sending judge requests and reading replies meanwhile; one thread at
    # a time touches the steps and the writers, so they need no locks.
    offload: Callable[..., Any] = asyncio.to_thread if judge is not None else _inline
    it = _read(source, batch_size, read_cols, has_key, view, strip)
    pending: Batch | None = None
    while (batch := await offload(prepare, it)) is not None:
        seen += len(batch.keys)
        if judge is not None:
            cur.counts[judge.name].entered += sum(batch.alive)
            batch.judge_task = asyncio.create_task(judge.score_batch(batch))
        if pending is not None:
            if pending.judge_task is not None:
                await pending.judge_task
            await offload(finish, pending)
        pending = batch
        if progress is not None:
            progress(seen)
    if pending is not None:
        if pending.judge_task is not None:
            await pending.judge_task
        await offload(finish, pending)
    return seen


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


async def curate_async(source: str | Path | Source, out: str | Path, steps: str | list[Any], *,
                       judge_role: Any = None, batch_size: int = 1024, split: str = "train",
                       question_fields: list[str] | None = None, answer_fields: list[str] | None = None,
                       overwrite: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Curate `source` into the dataset folder `out`; returns the manifest (also written there).

    `judge_role` is a `synthgen.engine.roles.Role` (needed only when the steps include judge).
    """
    started = time.perf_counter()
    parsed = parse_steps(steps)
    src = source if isinstance(source, Source) else open_source(source, split)
    out = Path(out)
    if not isinstance(source, Source) and Path(source).exists():
        here, there = Path(source).resolve(), out.resolve()
        if here == there or here.is_relative_to(there):
            raise ValueError(f"OUT {out} must not be IN or a folder holding it (it would be replaced)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = src.column_names
    view = TextView.for_columns(columns, question_fields, answer_fields)
    has_key = "key" in columns
    carried_judge = SCORE in columns and REASON in columns
    cur = Curation(parsed, DropLog(out / DROPS))
    built: list[Any] = []
    try:
        for name, params in parsed:
            cur.counts[name] = StepCounts()
            if name == "dedup":
                step: Any = DedupStep(params, view, out, split)
                cur.extra.setdefault("dedup", {})["against"] = {
                    str(ref): step.index_reference(ref) for ref in params.against}
            elif name == "filter":
                step = FilterStep(params)
            elif name == "balance":
                step = BalanceStep(params, src)
            else:
                if judge_role is None:
                    raise ValueError("the judge step needs a judge role (an endpoint: --base-url/--model)")
                step = JudgeStep(params, judge_role, view, columns)
            built.append(step)
        judge = next((s for s in built if isinstance(s, JudgeStep)), None)
        features = datasets.Features(src.features) if src.features is not None else None
        if features is None:
            raise ValueError(f"{src.name}: empty dataset")
        strip: tuple[str, ...] = ()
        if judge is not None and carried_judge:  # judged again: new scores replace the old
            strip, carried_judge = (SCORE, REASON), False
            del features[SCORE], features[REASON]
        with_judge = judge is not None or carried_judge
        if not has_key:
            features = datasets.Features({"key": datasets.Value("string"), **features})
        if judge is not None and not carried_judge:
            features[SCORE] = datasets.Value("float32")
            features[REASON] = datasets.Value("string")
        extra_cols = [SCORE] if carried_judge else []
        read_cols = list(dict.fromkeys(
            [c for c in ["key", *view.columns, view.image, *REFERENCE_COLUMNS, *extra_cols] if c] +
            [s.category for s in built if isinstance(s, BalanceStep) and s.category]))
        writer = DatasetWriter(out, features)
        if judge is not None and judge.params.top_fraction is not None:
            seen = await _two_pass(src, writer, built, cur, judge, batch_size=batch_size, view=view,
                                   read_cols=read_cols, has_key=has_key, out=out, features=features,
                                   progress=progress, strip=strip)
        else:
            seen = await _run_stage(src, writer.write, built, cur, batch_size=batch_size, view=view,
                                    read_cols=read_cols, has_key=has_key, with_judge=with_judge,
                                    carried_judge=carried_judge,
                                    judge_cut=judge.threshold_cut() if judge else None, progress=progress,
                                    strip=strip)
        writer.close()
    finally:
        cur.drops.close()
        for step in built:
            if hasattr(step, "close"):
                step.close()
    elapsed = time.perf_counter() - started
    manifest = {
        "kind": "synthgen-curation",
        "source": src.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "steps": [{"step": n, "params": p.model_dump(mode="json")} for n, p in parsed],
        "input_rows": seen,
        "output_rows": writer.rows,
        "dropped": dict(sorted(cur.drops.counts.items(), key=lambda kv: -kv[1])),
        "dropped_total": sum(cur.drops.counts.values()),
        "by_step": {n: {"in": c.entered, "dropped": c.dropped, "out": c.entered - c.dropped}
                    for n, c in cur.counts.items()},
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(seen / elapsed, 1) if elapsed else None,
        "drops_file": DROPS,
        **{s.name: {**cur.extra.get(s.name, {}), **s.summary()} for s in built if hasattr(s, "summary")},
    }
    if "judge" in manifest and cur.extra.get("judge_cut"):
        manifest["judge"]["cut"] = cur.extra["judge_cut"]
    write_json(out / MANIFEST, manifest)
    return manifest


async def _two_pass(src: Source, writer: DatasetWriter, built: list[Any], cur: Curation, judge: JudgeStep, *,
                    batch_size: int, view: TextView, read_cols: list[str], has_key: bool, out: Path,
                    features: datasets.Features, progress: Callable[[int], None] | None,
                    strip: tuple[str, ...] = ()) -> int:
    """Top-fraction judging: score everything up to the judge into parquet staging, then cut at
    the fraction's score and run the later steps over the staged records."""
    at = built.index(judge)
    staging = out / ".staging"
    staging.mkdir()
    staged_features = datasets.Features(features)
    schema = staged_features.arrow_schema
    pq_writer = pq.ParquetWriter(staging / "scored.parquet", schema)
    try:
        seen = await _run_stage(src, lambda cols: pq_writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema)),
                                built[:at + 1], cur, batch_size=batch_size, view=view, read_cols=read_cols,
                                has_key=has_key, with_judge=True, carried_judge=False, judge_cut=None,
                                progress=progress, strip=strip)
    finally:
        pq_writer.close()
    score, ties = top_fraction_cut(judge.histogram, judge.params.top_fraction or 1.0)
    cur.extra["judge_cut"] = {"score": score, "ties_kept": ties}
    taken = {"ties": 0}

    def cut(batch: Batch, c: Curation) -> None:
        for i, s in enumerate(batch.rows):
            value = s.get(SCORE)
            keep = value is not None and (round(value, 2) > score or (
                round(value, 2) == score and taken["ties"] < ties))
            if keep and round(value, 2) == score:
                taken["ties"] += 1
            if not keep:
                batch.alive[i] = False
                c.counts["judge"].dropped += 1
                c.drops.add(batch.keys[i], "judge_low_score", "judge", {"score": value, "cut": score})

    staged = open_source(staging / "scored.parquet")
    staged.features = features
    post_view = view
    await _run_stage(staged, writer.write, built[at + 1:], cur, batch_size=batch_size, view=post_view,
                     read_cols=[*read_cols, SCORE], has_key=True, with_judge=True, carried_judge=True,
                     judge_cut=None, pre_cut=cut)
    shutil.rmtree(staging)
    return seen


def curate(source: str | Path, out: str | Path, steps: str | list[Any], **kwargs: Any) -> dict[str, Any]:
    """Synchronous `curate_async` (its own event loop)."""
    return asyncio.run(curate_async(source, out, steps, **kwargs))
