"""One evaluation: load each task, ask the model under test, score, judge, write the report.

Answers and judgements go through the engine's roles (`resolve_roles` / `build_roles` /
`Role.chat`), so admission, retries with backoff and usage accounting are the engine's, and a
local checkpoint is batched on its model thread exactly as in generation. Each sample is one
coroutine — answer, then judge — so judging overlaps answering instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.engine.errors import RequestError
from synthgen.engine.messages import image_part, user
from synthgen.engine.roles import Role, build_roles, close_roles, resolve_roles
from synthgen.evaluator import scoring
from synthgen.evaluator.cache import JudgeCache
from synthgen.evaluator.judge import Judge
from synthgen.evaluator.metrics import rouge_l, warm_up
from synthgen.evaluator.spec import EvalSpec, TaskRef
from synthgen.evaluator.tasks import Sample, Task, get_task

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]
CACHE_FILE = "judgements.sqlite"


def _picture(img: Any) -> dict[str, Any]:
    """PNG, JPEG and WebP bytes go as they are; anything else (GIF, BMP, TIFF, PIL) as PNG."""
    if isinstance(img, bytes | bytearray):
        data = bytes(img)
        if data.startswith((b"\x89PNG", b"\xff\xd8")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            return image_part(data)
        import io

        from PIL import Image

        img = Image.open(io.BytesIO(data))
    return image_part(img, fmt="PNG")


def question_messages(sample: Sample) -> list[dict[str, Any]]:
    """Images first, then the question: the layout llm-jp-eval-mm's model wrappers send."""
    parts = [_picture(img) for img in sample.images]
    return [user([*parts, {"type": "text", "text": sample.question}])]


def iter_samples(task: Task, ref: TaskRef) -> Iterator[Sample]:
    for i, sample in enumerate(task.load(ref.source)):
        if ref.limit and i >= ref.limit:
            return
        yield sample


def count_samples(task: Task, ref: TaskRef) -> int:
    """A first pass for progress totals; keeps nothing (the pictures are read again when asked)."""
    return sum(1 for _ in iter_samples(task, ref))


class Evaluation:
    def __init__(self, spec: EvalSpec, roles: dict[str, Role], cache: JudgeCache | None,
                 progress: Progress | None = None) -> None:
        self.spec = spec
        self.model = roles["model"]
        self.judge = (Judge(roles["judge"], cache, structured=spec.judge_structured, retries=spec.judge_retries,
                            max_tokens=spec.judge_max_tokens) if "judge" in roles else None)
        self.progress = progress
        self.done = 0
        self.total = 0
        # Samples are read lazily and at most a few times what the model role admits are in flight
        # (each holds its pictures), so a benchmark of large page images never sits in memory
        # whole; the role's own admission does the exact limiting.
        self.window = max(4, 2 * int(self.model.config.concurrency or 8))

    def _tick(self, task: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress({"done": self.done, "total": self.total, "task": task})

    async def _one(self, task: Task, sample: Sample) -> dict[str, Any]:
        row: dict[str, Any] = {"id": sample.id, "question": sample.question, "reference": sample.reference,
                               **{k: v for k, v in sample.meta.items() if isinstance(v, str | int | float)}}
        try:
            result = await self.model.chat(question_messages(sample), **self.spec.generation.sampling())
            row.update(answer=result.text, finish_reason=result.finish_reason,
                       completion_tokens=result.completion_tokens)
        except RequestError as exc:
            row.update(answer="", error=exc.reason)
        if task.rouge:  # here, while other samples wait on the network, not in a pass at the end
            row["rouge_l"] = rouge_l([sample.reference], [row["answer"]])[0]
        if task.exact is not None:
            row["exact"] = task.exact(sample, row["answer"])
        if self.judge is not None and task.judge and row["answer"]:
            if task.judge == "heron":
                j = await self.judge.judge("heron", task.name, sample.id, row["answer"], question=sample.question,
                                           reference=sample.reference, context=sample.meta.get("context", ""))
            else:
                j = await self.judge.judge("answer", task.name, sample.id, row["answer"],
                                           question=sample.question, reference=sample.reference)
            row["judgement"] = j.as_dict()
        self._tick(task.name)
        return row

    async def _all(self, task: Task, ref: TaskRef) -> list[dict[str, Any]]:
        """Every sample through `_one`, read in chunks off the event loop, `window` in flight."""
        slots = asyncio.Semaphore(self.window)
        it = iter_samples(task, ref)
        running: list[asyncio.Task[dict[str, Any]]] = []

        async def one(sample: Sample) -> dict[str, Any]:
            try:
                return await self._one(task, sample)
            finally:
                slots.release()

        try:
            while chunk := await asyncio.to_thread(lambda: list(islice(it, 32))):
                for sample in chunk:
                    await slots.acquire()
                    running.append(asyncio.ensure_future(one(sample)))
            return list(await asyncio.gather(*running))
        except BaseException:
            for t in running:
                t.cancel()
            raise

    async def run_task(self, task: Task, ref: TaskRef) -> dict[str, Any]:
        start = time.perf_counter()
        rows = await self._all(task, ref)
        metrics = scoring.task_metrics(rows, task.judge if self.judge is not None else None)
        name, value = scoring.headline(metrics, task.headline)
        return {"title": task.title, "source": ref.source or task.hub_id, "n": len(rows),
                "answers_failed": sum(1 for r in rows if r.get("error")),
                "judge_kind": task.judge if self.judge is not None else None,
                "metrics": metrics, "headline": {"metric": name, "value": value},
                "published_key": task.published_key, "seconds": time.perf_counter() - start, "samples": rows}


async def evaluate(spec: EvalSpec, out_dir: str | Path | None = None, progress: Progress | None = None,
                   roles: dict[str, Role] | None = None) -> dict[str, Any]:
    """Run every task of `spec`; returns the report (and writes it under `out_dir` when given)."""
    tasks = [(get_task(ref.name), ref) for ref in spec.tasks]
    configured = {"model": spec.model, **({"judge": spec.judge} if spec.judge else {})}
    resolved = resolve_roles(configured, tuple(configured))
    if any(c.engine == "transformers" and c.model and Path(c.model).is_dir() for c in resolved.values()):
        # A trainer checkpoint may hold the trainer's ConvNeXt tower (ConvLLaVA recipes): register
        # its classes with transformers' Auto mappings so the engine's loader knows them.
        import synthgen.trainer.towers  # noqa: F401
    own_roles = roles is None
    roles = roles if roles is not None else build_roles(resolved)
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else (Path(out_dir).parent if out_dir else None)
    cache = JudgeCache(cache_dir / CACHE_FILE) if cache_dir is not None and "judge" in roles else None
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    ev = Evaluation(spec, roles, cache, progress)
    report: dict[str, Any] = {
        "label": spec.display_name(), "created_at": started.isoformat(), "synthgen_version": __version__,
        "model": {"name": str(roles["model"].model), "engine": resolved["model"].engine,
                  "base_url": resolved["model"].base_url},
        "judge": ({"name": str(roles["judge"].model), "engine": resolved["judge"].engine,
                   "base_url": resolved["judge"].base_url, "structured": spec.judge_structured,
                   "retries": spec.judge_retries} if "judge" in roles else None),
        "generation": spec.generation.model_dump(), "spec": spec.public_dict(), "tasks": {},
    }
    try:
        for task, ref in tasks:
            ev.total += await asyncio.to_thread(count_samples, task, ref)
        if any(task.rouge for task, _ in tasks):
            await asyncio.to_thread(warm_up)
        for task, ref in tasks:
            report["tasks"][task.name] = await ev.run_task(task, ref)
    finally:
        if cache is not None:
            cache.close()
        if own_roles:
            await close_roles(roles)
    wall = time.perf_counter() - t0
    report["seconds"] = wall
    report["usage"] = {name: role.usage.as_dict() for name, role in roles.items()}
    if ev.judge is not None:
        report["judge_stats"] = vars(ev.judge.stats)
        report["judge"]["prompt_hashes"] = dict(ev.judge.prompts.hashes)
        report["judge"]["structured_fallback"] = ev.judge.stats.structured_fallback
    if out_dir is not None:
        from synthgen.evaluator.report import write_report

        write_report(report, Path(out_dir))
    return report
