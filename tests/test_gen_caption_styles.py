"""caption-translate's style bank: every style through the CLI (kill and resume), weights, register, punctuation."""

from __future__ import annotations

import asyncio
import collections
import re

import datasets
import pytest
from gen_cli import kill_then_resume
from gen_responders import caption_style_responder

from synthgen.engine.runner import run_job
from synthgen.generators.caption_translate import bundled_styles, generator, polite
from synthgen.generators.images.samples import write_folder
from synthgen.loopback_server import LoopbackServer, last_user_text
from synthgen.spec import JobSpec

BANK = bundled_styles()
HALF_WIDTH = re.compile(r"[?!:()]")


def test_bank_has_what_happens_next_and_japanese_instructions_are_full_width():
    names = [s.name for s in BANK]
    assert len(names) >= 7 and {"short", "detailed", "dense", "what_next"} <= set(names)
    for style in BANK:
        for line in [style.prompt_ja, *style.instructions]:
            assert not HALF_WIDTH.search(line), line
        assert "です・ます" in style.prompt_ja
    assert polite("白い背景に赤い丸があります。左に青い四角が見えます。")
    assert not polite("白い背景に赤い丸がある。左に青い四角が見える。")
    assert not polite("白い背景に赤い丸があります。左に青い四角が見える。")  # the last sentence slips


def test_every_style_through_the_cli_weighted_with_kill_and_resume(tmp_path):
    write_folder(tmp_path / "imgs", 14)
    out = tmp_path / "run"
    styles = ",".join(s.name for s in BANK)
    with LoopbackServer(caption_style_responder, latency=0.02) as srv:
        args = ["run", "caption-translate", "--n", "14", "--base-url", srv.base_url, "--model", "M",
                "--set", f"params.source={tmp_path / 'imgs'}", "--set", f"params.styles=[{_quoted(styles)}]",
                "--set", "params.styles_per_image=3", "--out", str(out)]
        written, again = kill_then_resume(args, out, kill_after=4)
    assert 4 <= written < 14
    assert again.returncode == 0, again.stderr + again.stdout
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 14 and len(set(ds["key"])) == 14
    counts: collections.Counter[str] = collections.Counter()
    for row in ds:
        present = [s for s, text in row["captions_ja"].items() if text is not None]
        assert len(present) == 3
        counts.update(present)
        for name in present:
            style = next(s for s in BANK if s.name == name)
            assert row["captions"][name].startswith(f"[{name}]")
            assert row["captions_ja"][name].startswith(f"これは{style.label}です。") and polite(row["captions_ja"][name])
        msgs = row["messages"]
        assert len(msgs) == 6 and msgs[0]["content"].startswith("<image>\n")
        asked = [m["content"].removeprefix("<image>\n") for m in msgs[::2]]
        instructions = {i for s in BANK for i in s.instructions}
        assert all(a in instructions for a in asked)
    total = sum(s.weight for s in BANK)
    for style in BANK:  # dealt by weight: each style's share of the 42 captions, within one
        assert abs(counts[style.name] - 42 * style.weight / total) <= 1, (style.name, counts)


def _quoted(names: str) -> str:
    return ",".join(f'"{n}"' for n in names.split(","))


def test_captions_out_of_register_are_dropped(tmp_path):
    write_folder(tmp_path / "imgs", 3)

    def plain(body):
        prompt = last_user_text(body)
        if "英文：" in prompt and "この後に起こりそうな" in prompt:
            return "この後、赤い丸は右へ転がっていくだろう。"
        return caption_style_responder(body)

    with LoopbackServer(plain) as srv:
        spec = JobSpec(generator="caption-translate", n=3, max_inputs=3, out=str(tmp_path / "out"),
                       params={"source": str(tmp_path / "imgs"), "styles": ["short", "what_next"]},
                       roles={"default": {"base_url": srv.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.manifest["failures_by_reason"] == {"translation_not_polite": 3}


def test_unknown_styles_and_bad_banks_are_clear_errors(tmp_path):
    from pydantic import ValidationError

    for bad, message in (({"styles": ["poem"]}, "unknown styles"),
                         ({"styles_per_image": 0}, "styles_per_image"),
                         ({"style_bank": [BANK[0].model_dump(), BANK[0].model_dump()]}, "unique")):
        with pytest.raises(ValidationError, match=message):
            generator.parse_params({"source": str(tmp_path), **bad})
