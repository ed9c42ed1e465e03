"""caption-translate end to end: loopback VLM and LLM servers, generated images, the real CLI."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import time

import datasets
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from image_responders import CAPTIONS_EN, CAPTIONS_JA, image_responder, style_of
from PIL import Image

from synthgen.engine.runner import run_job
from synthgen.generators.images.samples import draw, encode, write_folder
from synthgen.generators.textcheck import is_japanese
from synthgen.loopback_server import LoopbackServer, Reply, last_user_text, loopback_site
from synthgen.spec import JobSpec

CLI = [sys.executable, "-m", "synthgen.service.cli"]


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _mixed_folder(folder):
    """8 usable pictures (one EXIF-rotated, one CMYK, one 20000 px wide) and 3 unusable files."""
    write_folder(folder, 5)
    rotated = Image.new("RGB", (120, 60), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "rotated.jpg").write_bytes(encode(rotated, "JPEG", exif=exif.tobytes()))
    (folder / "cmyk.jpg").write_bytes(encode(Image.new("CMYK", (90, 70), (0, 255, 255, 0)), "JPEG"))
    (folder / "wide.png").write_bytes(encode(Image.new("L", (20000, 1200), 90)))
    (folder / "corrupt.png").write_bytes(encode(draw(99))[:300])
    (folder / "text.jpg").write_bytes(b"this is a text file, not a photo")
    (folder / "tiny.png").write_bytes(encode(Image.new("RGB", (8, 8))))
    return 8


def test_cli_writes_image_dataset_with_japanese_captions(tmp_path):
    good = _mixed_folder(tmp_path / "imgs")
    vlm_reply = image_responder()
    llm_bodies: list[dict] = []

    def translator(body):
        llm_bodies.append(body)
        return vlm_reply(body)

    with LoopbackServer(vlm_reply) as vlm, LoopbackServer(translator) as llm:
        out = tmp_path / "run"
        proc = _run("run", "caption-translate", "--n", str(good), "--base-url", llm.base_url, "--model", "calm",
                    "--set", f"vlm.base_url={vlm.base_url}", "--set", "vlm.model=phi-vision",
                    "--set", f"params.source={tmp_path / 'imgs'}", "--set", "params.max_side=512",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    checks = vlm_reply.checks
    assert checks.bad_images == [] and checks.vlm_requests == good * 3
    assert all(max(size) <= 512 for size in checks.sizes)
    assert all(isinstance(m["content"], str) for b in llm_bodies for m in b["messages"])  # no images to the LLM

    ds = datasets.load_from_disk(str(out))
    assert len(ds) == good and len(set(ds["key"])) == good
    assert ds.features["image"] == datasets.Image()
    failures = [orjson.loads(x) for x in (out / "failures.jsonl").read_bytes().splitlines()]
    assert sorted(f["reason"] for f in failures) == ["corrupt_image", "image_too_small", "not_an_image"]
    by_source = {}
    for row in ds.cast_column("image", datasets.Image(decode=False)):
        by_source[row["source"]] = row
        data = row["image"]["bytes"]
        assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
        assert Image.open(io.BytesIO(data)).size == (row["width"], row["height"])
        assert set(row["captions"]) == set(row["captions_ja"]) == {"short", "detailed", "dense"}
        # each caption is the VLM's answer for this very picture (it names the size it was sent)
        assert f"{row['width']}" in row["captions"]["dense"]
        assert all(is_japanese(t) for t in row["captions_ja"].values())
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * 3
        assert msgs[0]["content"].startswith("<image>\n") and "<image>" not in msgs[2]["content"]
        assert {m["content"] for m in msgs[1::2]} == set(row["captions_ja"].values())
        assert row["models"] == {"vlm": "phi-vision", "translator": "calm"}
    assert (by_source["rotated.jpg"]["width"], by_source["rotated.jpg"]["height"]) == (60, 120)  # upright
    assert (by_source["wide.png"]["width"], by_source["wide.png"]["height"]) == (512, 31)
    assert by_source["cmyk.jpg"]["width"] == 90
    # every translation request carries the English caption it translates
    asked = [last_user_text(b) for b in llm_bodies]
    assert all(any(c.split(" (")[0][:40] in a for c in CAPTIONS_EN.values()) for a in asked)
    man = orjson.loads((out / "manifest.json").read_bytes())
    assert set(man["prompt_templates"]) == {"caption", "translate", "polish", "instructions"}
    assert man["models"]["vlm"]["base_url"] == vlm.base_url and man["counts"]["failed"] == 3


def test_refusals_bad_translations_and_truncation_are_dropped(tmp_path):
    """Faults keyed to the picture's width (which every caption states), so each reason is certain."""
    write_folder(tmp_path / "imgs", 12)
    for width in (101, 102, 103, 104):
        write_folder(tmp_path / "imgs" / f"w{width}", 2, size=(width, 80))
    base = image_responder()

    def messy(body):
        reply = base(body)
        prompt = last_user_text(body)
        if "English" in prompt:  # the VLM: its caption names the size of the image it was sent
            if any(f"101{sep}80" in reply for sep in ("x", " by ")):
                return "I'm sorry, but I cannot see the image you are referring to."
            if any(f"102{sep}80" in reply for sep in ("x", " by ")):
                return Reply(text=reply[:30], finish_reason="length")
            return reply
        if any(f"103{sep}80" in prompt for sep in ("x", " by ")):
            return "A red circle and a blue square on a white background."  # left in English
        if any(f"104{sep}80" in prompt for sep in ("x", " by ")):
            return CAPTIONS_JA["dense"] * 8  # far longer than its source
        return reply

    with LoopbackServer(messy) as srv:
        spec = JobSpec(generator="caption-translate", n=20, max_inputs=20, out=str(tmp_path / "out"),
                       params={"source": str(tmp_path / "imgs")},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.manifest["failures_by_reason"] == {
        "caption_refusal": 2, "truncated_caption": 2, "translation_not_japanese": 2, "translation_length_ratio": 2}
    assert result.stats.state == "incomplete"
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(ds) == 12 and set(ds["width"]) == {160}
    assert all(is_japanese(t) for row in ds["captions_ja"] for t in row.values())


def test_translation_starts_as_soon_as_its_caption_is_back(tmp_path):
    """The short caption's translation is requested while the detailed caption is still being written."""
    write_folder(tmp_path / "imgs", 1)
    base = image_responder()
    events: list[tuple[str, float]] = []

    def timed(body):
        prompt = last_user_text(body)
        if "English" in prompt:
            style = style_of(prompt)
            events.append((f"vlm-{style}", time.monotonic()))
            if style == "detailed":
                return Reply(text=base(body), hang=1.0)
        else:
            events.append(("llm", time.monotonic()))
        return base(body)

    with LoopbackServer(timed) as srv:
        spec = JobSpec(generator="caption-translate", n=1, out=str(tmp_path / "out"),
                       params={"source": str(tmp_path / "imgs")},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "succeeded"
    at = dict(events)
    first_translation = min(t for name, t in events if name == "llm")
    assert first_translation < at["vlm-detailed"] + 1.0  # before the slow caption came back
    assert abs(max(at["vlm-short"], at["vlm-dense"]) - at["vlm-detailed"]) < 0.5  # the three captions at once


def test_url_column_japanese_captions_and_one_turn(tmp_path):
    """A Hub-style table of URLs: downloads over loopback HTTP, VLM writes Japanese, polished."""
    pictures = {f"p{i}.png": encode(draw(i)) for i in range(4)}

    async def scenario():
        async def handle(request):
            name = request.match_info["name"]
            return web.Response(body=pictures[name]) if name in pictures else web.Response(status=404)

        async with loopback_site(handle) as base:
            # The broken link first: with exact admission a fifth input after four good ones never starts.
            urls = [f"{base}/{n}" for n in ["gone.png", *pictures]]
            pq.write_table(pa.table({"url": urls}), tmp_path / "links.parquet")
            server = LoopbackServer(image_responder())
            await server.start_async()
            spec = JobSpec(generator="caption-translate", n=4, out=str(tmp_path / "out"),
                           params={"source": str(tmp_path / "links.parquet"), "url_column": "url",
                                   "caption_language": "ja", "conversation": "one"},
                           roles={"default": {"base_url": server.base_url, "model": "M"}})
            try:
                return await run_job(spec), urls
            finally:
                await server.stop_async()

    result, urls = asyncio.run(scenario())
    assert result.stats.state == "succeeded"
    assert result.manifest["failures_by_reason"] == {"download_http_404": 1}
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(ds) == 4 and all(r["caption_language"] == "ja" for r in ds)
    assert ds[0]["captions"] == CAPTIONS_JA  # the VLM's Japanese, then polished by the translator
    assert all(len(r["messages"]) == 2 and r["messages"][0]["content"].startswith("<image>\n") for r in ds)
    assert sorted(ds["source"]) == sorted(urls[1:])


def test_kill_midway_then_resume_gives_exactly_n(tmp_path):
    write_folder(tmp_path / "imgs", 60, size=(64, 48))
    with LoopbackServer(image_responder(), latency=0.05) as srv:
        out = tmp_path / "run"
        common = ["run", "caption-translate", "--n", "50", "--base-url", srv.base_url, "--model", "M",
                  "--set", f"params.source={tmp_path / 'imgs'}", "--out", str(out), "--concurrency", "2"]
        proc = subprocess.Popen([*CLI, *common, "--set", "flush_seconds=0.2", "--set", "shard_rows=3"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marker = out / ".synthgen" / "progress.json"
        deadline = time.time() + 120
        while time.time() < deadline:
            if marker.exists() and orjson.loads(marker.read_bytes())["records"] >= 8:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        written = orjson.loads(marker.read_bytes())["records"]
        assert 8 <= written < 50
        again = _run(*common[:-2], "--concurrency", "16", "--resume")
    assert again.returncode == 0, again.stderr
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 50 and len(set(ds["key"])) == 50 and len(set(ds["image_sha256"])) == 50


def test_bad_params_are_clear_errors(tmp_path):
    from pydantic import ValidationError

    from synthgen.generators.caption_translate import generator

    for bad, message in (({"source": str(tmp_path / "nowhere")}, "not found"),
                         ({"source": str(tmp_path), "styles": ["short", "short"]}, "unique"),
                         ({"source": str(tmp_path), "styles": ["poem"]}, "styles"),
                         ({"source": str(tmp_path), "length_ratio": [2, 1]}, "length_ratio"),
                         ({"source": str(tmp_path), "max_sid": 5}, "max_sid")):
        with pytest.raises(ValidationError, match=message):
            generator.parse_params(bad)


@pytest.mark.parametrize("style", ["short", "detailed", "dense"])
def test_caption_prompt_asks_for_each_style(style):
    from synthgen.engine.prompts import Prompts
    from synthgen.generators.caption_translate import bundled_styles

    prompts = Prompts("caption_translate")
    bank = {s.name: s for s in bundled_styles()}
    assert style_of(prompts.render("caption", style=bank[style], language="en")) == style
    assert style_of(prompts.render("caption", style=bank[style], language="ja")) == style
