"""Multi-image records (category-recaption's and html-render's `images` list) in the exports:
one picture per image part (TRL), a list of files with one <image> each (LLaVA), and skipped
with a count where the format takes one picture (LLaVA-JP)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import datasets
from PIL import Image
from pydantic import BaseModel

from synthgen.engine.plugin import Generator, InputContext, RecordContext
from synthgen.engine.runner import run_job
from synthgen.loopback_server import LoopbackServer
from synthgen.publish.export import export
from synthgen.spec import JobSpec


class P(BaseModel):
    pass


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(buf, format="PNG")
    return buf.getvalue()


def _inputs(ctx: InputContext[P]) -> Iterator[dict[str, Any]]:
    yield from ({"i": i} for i in range(100))


async def _generate(item: dict[str, Any], ctx: RecordContext[P]) -> list[dict[str, Any]]:
    i = item["i"]
    reply = await ctx.role("writer").chat([{"role": "user", "content": "比べてください。"}])
    many = i % 2 == 0  # even records: 2 or 3 pictures; odd: one
    count = 2 + i % 4 // 2 if many else 1
    pictures = [_png((40 * k, 10 * i, 0)) for k in range(count)]
    first = "<image>\n" * count + "二つの画像の違いは何ですか。"
    return [{"image": None if many else pictures[0], "images": pictures if many else [],
             "messages": [{"role": "user", "content": first}, {"role": "assistant", "content": reply.text}]}]


GEN = Generator[P](
    name="multi", version="1", description="test", params_model=P, roles=("writer",), reads="nothing",
    inputs=_inputs, generate=_generate,
    features=lambda _p: datasets.Features({
        "image": datasets.Image(), "images": datasets.List(datasets.Image()),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})}))


def _run(tmp_path) -> Any:
    with LoopbackServer() as srv:
        spec = JobSpec(generator="multi", n=6, out=str(tmp_path / "run"),
                       roles={"default": {"base_url": srv.base_url, "model": "m"}})
        asyncio.run(run_job(spec, generator=GEN))
    return datasets.load_from_disk(str(tmp_path / "run"))


def test_exports_carry_every_picture_of_a_multi_image_record(tmp_path):
    ds = _run(tmp_path)
    counts = {r["key"]: (len(r["images"]) or 1) for r in ds}
    assert sorted(set(counts.values())) == [1, 2, 3]

    trl = export(tmp_path / "run", "trl", tmp_path / "trl")
    rows = datasets.load_dataset(str(tmp_path / "trl"), split="train", cache_dir=str(tmp_path / "cache"))
    assert trl.images == sum(counts.values()) and len(rows) == 6
    for row in rows:
        parts = [p for m in row["messages"] for p in m["content"] if p["type"] == "image"]
        assert len(parts) == len(row["images"]) == counts[row["id"]]
        assert not any("<image>" in (p["text"] or "") for m in row["messages"] for p in m["content"])

    llava = export(tmp_path / "run", "llava", tmp_path / "llava")
    entries = json.loads((tmp_path / "llava" / "data.json").read_text(encoding="utf-8"))
    assert llava.images == sum(counts.values()) and len(entries) == 6
    for e in entries:
        names = e["image"] if isinstance(e["image"], list) else [e["image"]]
        assert len(names) == counts[e["id"]] and all((tmp_path / "llava" / "images" / n).is_file() for n in names)
        assert e["conversations"][0]["value"].count("<image>") == len(names)
        assert e["conversations"][0]["value"].startswith("<image>\n" * len(names))

    jp = export(tmp_path / "run", "llava-jp", tmp_path / "jp")
    single = sum(1 for c in counts.values() if c == 1)
    assert jp.rows == single and jp.skipped == 6 - single
