"""Japanese Heron-Bench: 102 questions on 21 Japan-related images, judged against a reference.

Two layouts load: the parquet table llm-jp-eval-mm reads (`Silviase/Japanese-Heron-Bench`,
split `train`: `image`, `text` (the question), `question_id`, `category` (conv / detail /
complex), `context` (the image's description for the judge), `answer` (a map of model name to
reference answer; the reference is `gpt-4-0125-preview`'s)), and the raw snapshot Turing
publishes (`turing-motors/Japanese-Heron-Bench`: questions_ja.jsonl, answers_gpt4.jsonl,
context_ja.jsonl keyed by image, images/). Scored only by the judge: per category the model's
mean judge score over the reference answer's mean, times 100; the headline is their mean.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from synthgen.evaluator.tasks import Sample, Task, image_bytes, open_table, text

HUB = "Silviase/Japanese-Heron-Bench"
RAW_HUB = "turing-motors/Japanese-Heron-Bench"
REFERENCE_MODEL = "gpt-4-0125-preview"
CATEGORIES = ("conv", "detail", "complex")


def _reference(answer) -> str:
    if isinstance(answer, dict):
        if answer.get(REFERENCE_MODEL):
            return text(answer[REFERENCE_MODEL])
        return text(next((v for v in answer.values() if v), ""))
    return text(answer)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _load_raw(root: Path) -> Iterator[Sample]:
    answers = {a["question_id"]: a for a in _jsonl(root / "answers_gpt4.jsonl")}
    contexts = {c["image"]: c for c in _jsonl(root / "context_ja.jsonl")}
    for q in _jsonl(root / "questions_ja.jsonl"):
        ctx = contexts.get(q["image"], {})
        yield Sample(id=text(q["question_id"]), question=text(q["text"]),
                     reference=text(answers.get(q["question_id"], {}).get("text")),
                     images=[(root / "images" / q["image"]).read_bytes()],
                     meta={"category": q.get("category", ""), "context": text(ctx.get("caption", ctx.get("context"))),
                           "image_category": q.get("image_category", "")})


def load(source: str | None) -> Iterator[Sample]:
    if source == RAW_HUB:
        from huggingface_hub import snapshot_download

        yield from _load_raw(Path(snapshot_download(RAW_HUB, repo_type="dataset")))
        return
    if source and (Path(source) / "questions_ja.jsonl").exists():
        yield from _load_raw(Path(source))
        return
    for row in open_table(source, HUB, "train"):
        yield Sample(id=text(row["question_id"]), question=text(row["text"]), reference=_reference(row["answer"]),
                     images=[image_bytes(row["image"])], meta={"category": text(row["category"]), "context": text(row["context"])})


task = Task(name="japanese-heron-bench", title="Japanese Heron-Bench", hub_id=HUB, split="train", load=load,
            rouge=False, judge="heron", published_key="Heron", headline="heron",
            description="LLM judge vs a GPT-4 reference, per category (conv, detail, complex)")
