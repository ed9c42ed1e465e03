"""Special files and odd names (#12 items 6, 7): a FIFO, a device and a file name that is not
UTF-8 each fail their own record within the read timeout; the run goes on and ends with n."""

from __future__ import annotations

import asyncio
import os
import time

import datasets
import pytest
from image_responders import image_responder

from synthgen import policy
from synthgen.engine.runner import run_job
from synthgen.generators.images import sources
from synthgen.generators.images.normalize import ImageRejected
from synthgen.generators.images.samples import draw, encode, write_folder
from synthgen.loopback_server import LoopbackServer
from synthgen.spec import JobSpec


def test_fifo_device_and_non_utf8_names_fail_only_their_records(tmp_path):
    folder = tmp_path / "imgs"
    write_folder(folder, 3)
    os.mkfifo(folder / "stuck.png")  # no writer: a plain open() would block for good
    (folder / "zero.png").symlink_to("/dev/zero")  # size 0 by stat, endless when read
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as fh:  # Latin-1 name, not UTF-8
        fh.write(encode(draw(7)))
    start = time.monotonic()
    with LoopbackServer(image_responder()) as srv:
        spec = JobSpec(generator="caption-translate", n=3, max_inputs=6, out=str(tmp_path / "out"),
                       flush_seconds=0.2, roles={"default": {"base_url": srv.base_url, "model": "M"}},
                       params={"source": str(folder), "caption_language": "ja", "conversation": "one"})
        result = asyncio.run(asyncio.wait_for(run_job(spec), 120))
    assert time.monotonic() - start < 120
    assert result.stats.state == "succeeded", result.stats.notes
    assert result.manifest["failures_by_reason"] == {"image_not_regular_file": 2, "image_file_name_not_utf8": 1}
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 3


def test_special_file_sources_are_refused_at_validation(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(ValueError, match="not a regular file"):
        sources.ImageInputParams(source=str(tmp_path / "pipe.jsonl"))
    with pytest.raises(ValueError, match="not a regular file"):
        sources.ImageInputParams(source="/dev/zero")


def test_size_cap_is_enforced_while_reading(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 5000)
    with pytest.raises(policy.FileTooLarge):
        policy.open_regular(big, 1024)
    with pytest.raises(policy.NotRegularFile):
        policy.open_regular("/dev/zero", 1024)
    assert len(policy.open_regular(big, 10_000)) == 5004


def test_a_read_that_hangs_fails_its_record_after_the_timeout(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(encode(draw(1)))
    p = sources.ImageInputParams(source=str(tmp_path))
    monkeypatch.setattr(sources, "_read_file", lambda path, limits: time.sleep(1.5))  # a stalled network mount
    previous = policy.current()
    policy.activate(policy.Policy(data_root=tmp_path, read_timeout_s=0.3))
    try:
        async def timed() -> float:
            start = time.monotonic()
            with pytest.raises(ImageRejected, match="image_read_timeout"):
                await sources.load_image({"file": "a.png"}, p, None)
            return time.monotonic() - start

        assert asyncio.run(timed()) < 1.2  # the record fails at the timeout; the stalled thread is left behind
    finally:
        policy.activate(previous)


def test_image_paths_in_a_table_stay_inside_the_roots_under_a_worker_policy(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(encode(draw(2)))
    root = tmp_path / "root"
    root.mkdir()
    p = sources.ImageInputParams(source=str(root))
    previous = policy.current()
    policy.activate(policy.Policy(data_root=root))
    try:
        with pytest.raises(ImageRejected, match="image_path_not_allowed"):
            asyncio.run(sources.load_image({"path": str(outside)}, p, None))
        with pytest.raises(ImageRejected, match="image_path_not_allowed"):
            asyncio.run(sources.load_image({"path": "/dev/zero"}, p, None))
    finally:
        policy.activate(previous)
    assert asyncio.run(sources.load_image({"path": str(outside)}, p, None))  # the CLI may read it
