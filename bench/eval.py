"""Evaluator throughput: 500 samples against a loopback VLM endpoint and a loopback judge.

Each sample is one answer request and one judge request, both through the engine's roles
(admission, retries) with Rouge-L on every answer. Both servers answer after a fixed latency L
and each role admits C requests at once, so the best any client can do is the pipeline bound:
answers finish in waves of C every L, each wave's judgements one L later, i.e. 2N requests in
L x (ceil(N / C) + 1) seconds. The figure is achieved / ideal requests per second for the task
phase (answers, judgements, Rouge-L and scoring; not the dataset load), the median of --rounds.
Servers run in their own processes; a fresh judgement cache each round, so nothing is cached.
Each round also runs the same pipeline with a bare aiohttp client (`plain_rps`): on a shared
machine that says how much of the gap to the ideal is the machine and how much the evaluator
(`vs_plain`). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from throughput import free_port, wait_for_port  # type: ignore[import-not-found]


def judge_reply(_body: dict) -> str:
    return '{"reason": "正解例と内容が一致している", "score": 4}'


def serve_judge(port: int, latency: float) -> None:
    from aiohttp import web

    from synthgen.loopback_server import LoopbackServer

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    server = LoopbackServer(judge_reply, latency=latency)
    web.run_app(server.app(), host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


def start(kind: str, latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = ([sys.executable, "-m", "synthgen.loopback_server"] if kind == "vlm" else [sys.executable, __file__, "--serve-judge"])
    proc = subprocess.Popen([*cmd, "--port", str(port), "--latency", str(latency)])
    return proc, wait_for_port(proc, port)


def write_task(root: Path, n: int) -> Path:
    """A JA-VLM-Bench-In-the-Wild-format copy with n rows of small generated pictures."""
    import io

    import datasets
    from PIL import Image, ImageDraw

    rows: dict[str, list] = {"image": [], "question": [], "answer": []}
    for i in range(n):
        img = Image.new("RGB", (64, 64), (240, 240, 240))
        ImageDraw.Draw(img).ellipse([8, 8, 56, 56], fill=((i * 37) % 256, (i * 91) % 256, 120))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        rows["image"].append({"bytes": buf.getvalue(), "path": None})
        rows["question"].append(f"写真に写っているものを説明してください。（{i}）")
        rows["answer"].append("灰色の背景に丸が一つ描かれています。")
    (root / "data").mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def one_round(vlm: str, judge: str, source: Path, n: int, concurrency: int, cache: Path) -> dict[str, float]:
    from synthgen.evaluator.runner import evaluate
    from synthgen.evaluator.spec import EvalSpec

    spec = EvalSpec.model_validate({
        "model": {"base_url": vlm, "model": "loop-vlm", "concurrency": concurrency},
        "judge": {"base_url": judge, "model": "loop-judge", "concurrency": concurrency},
        "tasks": [{"name": "ja-vlm-bench-in-the-wild", "source": str(source), "limit": n}],
        "judge_structured": False, "cache_dir": str(cache)})
    report = asyncio.run(evaluate(spec))
    task = report["tasks"]["ja-vlm-bench-in-the-wild"]
    requests = report["usage"]["model"]["requests"] + report["usage"]["judge"]["requests"]
    failed = report["usage"]["model"]["failed"] + report["usage"]["judge"]["failed"]
    return {"seconds": task["seconds"], "requests": requests, "failed": failed, "judged": task["metrics"]["judged"],
            "rouge_l": task["metrics"]["rouge_l"]}


async def _plain(vlm: str, judge: str, source: Path, n: int, c: int) -> dict[str, float]:
    """The same pipeline with nothing but aiohttp: per sample an answer request then a judge
    request, C in flight per server, 2C samples at once. What this machine allows right now."""
    import base64

    import aiohttp
    import datasets

    ds = datasets.load_dataset(str(source), split="test").cast_column("image", datasets.Image(decode=False))
    rows = [(r["question"], "data:image/png;base64," + base64.b64encode(r["image"]["bytes"]).decode())
            for r in ds.select(range(n))]
    model_slots, judge_slots, window = asyncio.Semaphore(c), asyncio.Semaphore(c), asyncio.Semaphore(2 * c)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def post(url: str, body: dict) -> str:
            async with session.post(f"{url}/chat/completions", json=body) as resp:
                return (await resp.json())["choices"][0]["message"]["content"]

        async def one(question: str, url: str) -> None:
            try:
                async with model_slots:
                    answer = await post(vlm, {"model": "m", "max_tokens": 256, "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]})
                async with judge_slots:
                    await post(judge, {"model": "j", "messages": [{"role": "user", "content": question + answer}]})
            finally:
                window.release()

        start = time.perf_counter()
        tasks = []
        for q, url in rows:
            await window.acquire()
            tasks.append(asyncio.ensure_future(one(q, url)))
        await asyncio.gather(*tasks)
        return {"seconds": time.perf_counter() - start, "requests": 2 * n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request, both servers")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight per role")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-judge", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_judge:
        serve_judge(args.port, args.latency)
        return
    n, c, lat = args.samples, args.concurrency, args.latency
    ideal_s = lat * (math.ceil(n / c) + 1)
    ideal_rps = 2 * n / ideal_s
    vlm_proc, vlm = start("vlm", lat)
    judge_proc, judge = start("judge", lat)
    rounds = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = write_task(Path(tmp) / "task", n)
            for k in range(max(1, args.rounds)):
                r = one_round(vlm, judge, source, n, c, Path(tmp) / f"cache{k}")
                if r["requests"] != 2 * n or r["failed"] or r["judged"] != n:
                    raise SystemExit(f"round {k}: expected {2 * n} good requests, got {r}")
                r["achieved_rps"] = r["requests"] / r["seconds"]
                r["ratio"] = r["achieved_rps"] / ideal_rps
                plain = asyncio.run(_plain(vlm, judge, source, n, c))
                r["plain_rps"] = plain["requests"] / plain["seconds"]
                r["vs_plain"] = r["achieved_rps"] / r["plain_rps"]
                rounds.append(r)
                print(f"round {k}: {r['requests']} requests in {r['seconds']:.2f} s = {r['achieved_rps']:.0f} req/s "
                      f"(ideal {ideal_rps:.0f}, plain aiohttp {r['plain_rps']:.0f}); ratio {r['ratio']:.3f}, "
                      f"vs plain {r['vs_plain']:.3f}", file=sys.stderr)
    finally:
        for proc in (vlm_proc, judge_proc):
            proc.terminate()
            proc.wait(10)
    result = {"samples": n, "latency_s": lat, "concurrency": c, "ideal_rps": round(ideal_rps, 1),
              "achieved_rps": round(statistics.median(r["achieved_rps"] for r in rounds), 1),
              "ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
              "plain_rps": round(statistics.median(r["plain_rps"] for r in rounds), 1),
              "plain_ratio": round(statistics.median(r["plain_rps"] for r in rounds) / ideal_rps, 3),
              "vs_plain": round(statistics.median(r["vs_plain"] for r in rounds), 3),
              "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
              "load_avg_1m": round(os.getloadavg()[0], 2), "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main()
