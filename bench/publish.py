"""Peak memory and throughput of a large push: a few GB of generated image rows to the loopback Hub.

Makes a caption-translate run with the real engine (loopback VLM/LLM server, N noise pictures of
SIDE px, which JPEG cannot shrink much, so each row carries ~0.5-1 MB of image bytes), then pushes
it with `synthgen.publish.hub.push` to a loopback Hub running in its own process (its buffers do
not count). A thread samples this process's RSS every 20 ms during the push. Prints the figures;
the last line is JSON: dataset_gb, shards, commits, push_s, mb_per_s, rss_before_mb, rss_peak_mb,
rss_growth_mb, and the peak split into anon (the process's own memory) and file (pages of mapped
files). Flat memory means rss_growth_mb stays far below one shard (500 MB) and does not grow
with --rows. The run is made in the same process first, so rss_before_mb includes its leftovers.

    python bench/publish.py --rows 3000 --side 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rss_mb() -> dict[str, float]:
    """VmRSS and its parts: RssAnon (this process's own memory) and RssFile (mapped file pages)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out


def noise_folder(folder: Path, n: int, side: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    for i in range(n):
        shifted = np.roll(base, shift=(i * 7) % side, axis=1) ^ np.uint8(i % 251)
        Image.fromarray(shifted).save(folder / f"img-{i:06d}.jpg", quality=95)


def make_run(tmp: Path, rows: int, side: int) -> Path:
    from image_responders import image_responder

    from synthgen.engine.runner import run_job
    from synthgen.loopback_server import LoopbackServer
    from synthgen.spec import JobSpec

    noise_folder(tmp / "imgs", rows, side)
    with LoopbackServer(image_responder()) as srv:
        spec = JobSpec(generator="caption-translate", n=rows, out=str(tmp / "run"),
                       params={"source": str(tmp / "imgs"), "max_side": side, "jpeg_quality": 95},
                       roles={"default": {"base_url": srv.base_url, "model": "bench-vlm"}}, concurrency=64)
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "succeeded", result.stats.state
    shutil.rmtree(tmp / "imgs")
    return tmp / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    args = parser.parse_args()
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench-publish-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.monotonic()
        run = make_run(tmp, args.rows, args.side)
        print(f"run of {args.rows} rows made in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        from synthgen.engine.runs import open_run

        dataset_bytes = sum(Path(f["filename"]).stat().st_size for f in open_run(run).dataset().cache_files)
        port = free_port()
        hub = subprocess.Popen([sys.executable, "-m", "synthgen.publish.loopback_hub", "--port", str(port),
                                "--root", str(tmp / "hub"), "--token", "bench-token"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            from synthgen.publish.hub import push

            assert len(open_run(run).dataset()) == args.rows
            before = rss_mb()
            peak = dict(before)
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    for key, value in rss_mb().items():
                        peak[key] = max(peak[key], value)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t1 = time.monotonic()
            result = push(run, "bench/large", token="bench-token", endpoint=f"http://127.0.0.1:{port}",
                          staging=tmp / "staging")
            push_s = time.monotonic() - t1
            done.set()
            sampler.join()
        finally:
            hub.terminate()
            hub.wait(30)
        figures = {"rows": args.rows, "dataset_gb": round(dataset_bytes / 1e9, 2), "shards": result.shards,
                   "commits": result.commits, "push_s": round(push_s, 1),
                   "mb_per_s": round(dataset_bytes / 1e6 / push_s, 1), "rss_before_mb": round(before["VmRSS"]),
                   "rss_peak_mb": round(peak["VmRSS"]), "rss_growth_mb": round(peak["VmRSS"] - before["VmRSS"]),
                   "anon_peak_mb": round(peak["RssAnon"]), "anon_growth_mb": round(peak["RssAnon"] - before["RssAnon"]),
                   "file_peak_mb": round(peak["RssFile"])}
        print(f"pushed {figures['dataset_gb']} GB in {figures['shards']} shards / {figures['commits']} commits in "
              f"{push_s:.0f}s; RSS {before['VmRSS']:.0f} MB before, peak {peak['VmRSS']:.0f} MB "
              f"(own memory {peak['RssAnon']:.0f} MB, mapped files {peak['RssFile']:.0f} MB)", file=sys.stderr)
        print(json.dumps(figures))
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
