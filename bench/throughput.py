"""Engine throughput against a loopback OpenAI-compatible server with fixed latency.

Measured side by side in one run, each client in its own process against the same server
process: (a) the ceiling, a plain aiohttp client (asyncio's default loop, stdlib json, one
session, a semaphore) sending single-turn chat requests; (b) persona-qa records through the
engine, counting every request it sends. Both at the same concurrency. On a shared machine one
measurement is noisy, so `--rounds` alternates the two and the ratio is the median of the
rounds' ratios. The last line is a JSON object with ceiling_rps, engine_rps, ratio and
peak_rss_mb (medians; `rounds` lists each round), and `spend`: requests sent ÷ requests the
records needed (persona-qa: 2 per turn) for runs of n = 50 and n = 4,000 at the same
concurrency, the check on exact admission (target ≤ 1.02).

`--mode caption-translate` runs bench/caption_translate.py instead (two endpoints, VLM slower
than LLM).

`--memory` instead runs the engine for 10k and 100k records and reports RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "synthgen.loopback_server", "--port", str(port),
                             "--latency", str(latency)])
    return proc, wait_for_port(proc, port)


def wait_for_port(proc: subprocess.Popen[bytes], port: int) -> str:
    """The server's base URL once it accepts connections (the process is killed if it never does)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("loopback server did not start")


# -- (a) the ceiling: plain aiohttp, default loop, stdlib json ---------------------------------
async def _ceiling(base_url: str, concurrency: int, seconds: float) -> float:
    import aiohttp

    body = {"model": "m", "messages": [{"role": "user", "content": "日本の首都はどこですか。"}],
            "max_tokens": 64, "temperature": 0.7}
    sem = asyncio.Semaphore(concurrency)
    done = 0
    deadline = time.perf_counter() + seconds

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with sem, session.post(f"{base_url}/chat/completions", data=json.dumps(body),
                                             headers={"Content-Type": "application/json"}) as resp:
                    data = json.loads(await resp.read())
                    assert data["choices"][0]["message"]["content"]
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


# -- (b) the engine: persona-qa records ---------------------------------------------------------
def _engine(base_url: str, concurrency: int, records: int) -> dict[str, float]:
    from synthgen.engine.runner import install_fast_loop, run_job
    from synthgen.spec import JobSpec

    install_fast_loop()
    # Module imports are a once-per-process cost, not throughput: load them before the clock
    # (job setup, persona loading and finalize stay inside it).
    import pyarrow.parquet  # noqa: F401

    import synthgen.engine.openai_http  # noqa: F401
    from synthgen.engine import plugin

    plugin.get("persona-qa")
    with tempfile.TemporaryDirectory() as tmp:
        spec = JobSpec(generator="persona-qa", n=records, concurrency=concurrency, out=str(Path(tmp) / "run"),
                       roles={"default": {"base_url": base_url, "model": "m", "concurrency": concurrency,
                                          "max_tokens": 256}})
        start = time.perf_counter()
        result = asyncio.run(run_job(spec))
        elapsed = time.perf_counter() - start
        requests = sum(u["requests"] for u in result.manifest["usage"].values())
        assert result.manifest["counts"]["records"] == records, result.manifest["counts"]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        needed = records * 2 * result.manifest["params"]["turns"]
        return {"rps": requests / elapsed, "records_per_s": records / elapsed, "requests": requests,
                "requests_over_needed": requests / needed, "peak_rss_mb": rss}


def _child(args: argparse.Namespace) -> None:
    if args.child == "ceiling":
        print(json.dumps({"rps": asyncio.run(_ceiling(args.base_url, args.concurrency, args.seconds))}))
    else:
        print(json.dumps(_engine(args.base_url, args.concurrency, args.records)))


def _run_child(kind: str, base_url: str, *extra: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--base-url", base_url, *extra],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=15.0, help="ceiling measurement length")
    parser.add_argument("--records", type=int, default=8000, help="persona-qa records for the engine run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ceiling/engine rounds")
    parser.add_argument("--memory", action="store_true", help="RSS at 10k vs 100k records instead")
    parser.add_argument("--mode", choices=["persona-qa", "caption-translate"], default="persona-qa")
    parser.add_argument("--child", choices=["ceiling", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.mode == "caption-translate":
        sys.path.insert(0, str(Path(__file__).parent))
        from caption_translate import main as caption_main  # type: ignore[import-not-found]

        sys.argv = [sys.argv[0]]
        caption_main()
        return
    server, base_url = start_server(args.latency)
    try:
        c = str(args.concurrency)
        if args.memory:
            small = _run_child("engine", base_url, "--concurrency", c, "--records", "10000")
            large = _run_child("engine", base_url, "--concurrency", c, "--records", "100000")
            result = {"rss_10k_mb": round(small["peak_rss_mb"], 1), "rss_100k_mb": round(large["peak_rss_mb"], 1),
                      "growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1),
                      "engine_rps_100k": round(large["rps"], 1)}
        else:
            rounds = []
            for _ in range(max(1, args.rounds)):
                ceiling = _run_child("ceiling", base_url, "--concurrency", c, "--seconds", str(args.seconds))
                engine = _run_child("engine", base_url, "--concurrency", c, "--records", str(args.records))
                rounds.append({"ceiling_rps": round(ceiling["rps"], 1), "engine_rps": round(engine["rps"], 1),
                               "ratio": round(engine["rps"] / ceiling["rps"], 3),
                               "records_per_s": round(engine["records_per_s"], 1),
                               "peak_rss_mb": round(engine["peak_rss_mb"], 1)})
                print(f"ceiling: {ceiling['rps']:.0f} req/s; engine: {engine['rps']:.0f} req/s "
                      f"({engine['records_per_s']:.0f} persona-qa records/s, {engine['requests']} requests)",
                      file=sys.stderr)
            result = {k: statistics.median(r[k] for r in rounds)
                      for k in ("ceiling_rps", "engine_rps", "ratio", "peak_rss_mb")}
            result["rounds"] = rounds
            result["spend"] = {}
            for n in (50, 4000):
                run = _run_child("engine", base_url, "--concurrency", c, "--records", str(n))
                result["spend"][f"n{n}"] = round(run["requests_over_needed"], 4)
                print(f"n={n}: {run['requests']} requests, {run['requests_over_needed']:.4f} of what "
                      f"{n} records need", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(10)
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main()
