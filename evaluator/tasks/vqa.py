"""SakanaAI's two Japanese VQA sets, scored by Rouge-L (and a 1-5 judge when one is configured).

JA-VG-VQA-500 (`SakanaAI/JA-VG-VQA-500`, split `test`): one row per image with `image_id`,
`image` and `qas`, a list of `{qa_id, question, answer}`; llm-jp-eval-mm flattens it into one
sample per question, and so do we (sample id = qa_id).

JA-VLM-Bench-In-the-Wild (`SakanaAI/JA-VLM-Bench-In-the-Wild`, split `test`): one row per
question with `image`, `question`, `answer` (and page/image URLs); its sample id is the row index,
as llm-jp-eval-mm numbers it.
"""

from __future__ import annotations

from collections.abc import Iterator

from synthgen.evaluator.tasks import Sample, Task, image_bytes, open_table, text

VG_HUB = "SakanaAI/JA-VG-VQA-500"
WILD_HUB = "SakanaAI/JA-VLM-Bench-In-the-Wild"


def load_vg_vqa(source: str | None) -> Iterator[Sample]:
    for row in open_table(source, VG_HUB, "test"):
        for qa in row["qas"]:
            yield Sample(id=text(qa["qa_id"]), question=text(qa["question"]), reference=text(qa["answer"]),
                         images=[image_bytes(row["image"])], meta={"image_id": text(row.get("image_id"))})


def load_wild(source: str | None) -> Iterator[Sample]:
    for i, row in enumerate(open_table(source, WILD_HUB, "test")):
        yield Sample(id=str(i), question=text(row["question"]), reference=text(row["answer"]), images=[image_bytes(row["image"])])


ja_vg_vqa_500 = Task(
    name="ja-vg-vqa-500", title="JA-VG-VQA-500", hub_id=VG_HUB, split="test", load=load_vg_vqa,
    description="500 Visual Genome images with Japanese Q&A; short answers, Rouge-L", published_key="VG-VQA")
ja_vlm_bench_in_the_wild = Task(
    name="ja-vlm-bench-in-the-wild", title="JA-VLM-Bench-In-the-Wild", hub_id=WILD_HUB, split="test",
    load=load_wild, description="Japanese scenes with free-form questions; Rouge-L", published_key="JVB-ItW")
