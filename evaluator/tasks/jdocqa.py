"""JDocQA: questions on Japanese PDF pages (document understanding and OCR).

Loaded from the table llm-jp-eval-mm reads (`speed/JDocQA`, split `test`: `question`, `answer`,
`answer_type` 0 yes/no, 1 factoid, 2 numerical, 3 open-ended, page images `image_0`..`image_3`,
`question_id`), or a local copy. Closed types are scored as llm-jp-eval-mm does: both texts lose
「です」, 「。」, 「、」 and spaces and are NFKC-normalised, then the reference must occur in the
answer. Open-ended answers get Rouge-L and the judge here; llm-jp-eval-mm scores them with BLEU
(sacrebleu's ja-mecab tokenizer), so our `exact` covers closed types only and is labelled so.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

from synthgen.evaluator.tasks import Sample, Task, image_bytes, open_table, text

HUB = "speed/JDocQA"
ANSWER_TYPES = {0: "yesno", 1: "factoid", 2: "numerical", 3: "open-ended"}


def normalize(value: str) -> str:
    for piece in ("です", "。", "、", " "):
        value = value.replace(piece, "")
    return unicodedata.normalize("NFKC", value.strip())


def exact(sample: Sample, answer: str) -> float | None:
    if sample.meta.get("answer_type") == "open-ended":
        return None
    return 1.0 if normalize(sample.reference) in normalize(answer) else 0.0


def load(source: str | None) -> Iterator[Sample]:
    for i, row in enumerate(open_table(source, HUB, "test")):
        images = [image_bytes(row[c]) for c in ("image_0", "image_1", "image_2", "image_3") if row.get(c) is not None]
        kind = row.get("answer_type")
        kind = ANSWER_TYPES.get(int(kind), str(kind)) if isinstance(kind, int) or str(kind).isdigit() else text(kind)
        yield Sample(id=text(row.get("question_id", i)), question=text(row["question"]), reference=text(row["answer"]),
                     images=images, meta={"answer_type": kind})


task = Task(name="jdocqa", title="JDocQA", hub_id=HUB, split="test", load=load, exact=exact, published_key="JDocQA",
            headline="exact",
            description="Japanese document pages: exact match on closed questions, Rouge-L and judge on all")
