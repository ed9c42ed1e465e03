"""API latency under load while a job runs: 50 concurrent clients against `synthgen serve`.

Starts a loopback OpenAI-compatible server (its own process), then `synthgen serve` (uvicorn,
one API process, plus the worker process it starts) on a temporary data root with SQLite,
submits a long persona-qa job and waits until it is writing records. Then `--clients`
concurrent aiohttp clients each loop: POST /v1/jobs (a small job that stays queued behind the
running one), then GET /v1/jobs/{id} `--gets` times. Latency is measured per request, client
side, so it includes the clients' own CPU on the same machine. The last line is a JSON object
with p50/p99 (ms) of each call, the request counts, the records the running job wrote during
the measurement (proof it was in progress), and the API process's own CPU time per request
(from /proc; steadier than latency on a shared machine: one core serves about 1000/x req/s).

With no think time (the default) 50 clients form a closed loop that saturates the server, so
latency there is mostly queueing: p50 ~= 50 / throughput. `--think-ms` makes each client pause
between calls (uniform 0..2x, so clients do not move in lockstep), like people and dashboards
do, which measures latency below saturation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from throughput import free_port


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as r:
        return await r.json()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(api: str, model_url: str, clients: int, rounds: int, gets: int, think: float, api_pid: int) -> dict:
    posts: list[float] = []
    reads: list[float] = []
    errors = {"post": 0, "get": 0}
    small = {"generator": "persona-qa", "n": 5, "roles": {"default": {"base_url": model_url, "model": "M"}}}
    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        big = {**small, "n": 1_000_000, "concurrency": 32, "flush_seconds": 1.0}
        async with session.post(f"{api}/v1/jobs", json=big) as r:
            running = (await r.json())["id"]
        while (await get_json(session, f"{api}/v1/jobs/{running}"))["progress"]["records"] < 20:
            await asyncio.sleep(0.2)
        before = (await get_json(session, f"{api}/v1/jobs/{running}"))["progress"]["records"]

        async def client(rng: random.Random) -> None:
            # Independent clients: pauses drawn around `think` (uniform 0..2x), so they do not
            # march in lockstep after a synchronised start.
            def pause() -> float:
                return rng.uniform(0, 2 * think)

            for _ in range(rounds):
                await asyncio.sleep(pause())
                t = time.perf_counter()
                async with session.post(f"{api}/v1/jobs", json=small) as r:
                    body = await r.json()
                posts.append((time.perf_counter() - t) * 1000)
                if r.status != 201:
                    errors["post"] += 1
                    continue
                for _ in range(gets):
                    await asyncio.sleep(pause())
                    t = time.perf_counter()
                    async with session.get(f"{api}/v1/jobs/{body['id']}") as g:
                        await g.read()
                    reads.append((time.perf_counter() - t) * 1000)
                    errors["get"] += g.status != 200

        started, cpu0 = time.perf_counter(), cpu_seconds(api_pid)
        await asyncio.gather(*(client(random.Random(i)) for i in range(clients)))
        wall, cpu = time.perf_counter() - started, cpu_seconds(api_pid) - cpu0
        after = await get_json(session, f"{api}/v1/jobs/{running}")
        async with session.post(f"{api}/v1/jobs/{running}/cancel") as r:
            await r.read()
    return {
        "post_jobs": {"p50_ms": round(statistics.median(posts), 2), "p99_ms": round(pct(posts, 0.99), 2),
                      "n": len(posts), "errors": errors["post"]},
        "get_job": {"p50_ms": round(statistics.median(reads), 2), "p99_ms": round(pct(reads, 0.99), 2),
                    "n": len(reads), "errors": errors["get"]},
        "clients": clients, "requests_per_s": round((len(posts) + len(reads)) / wall, 1),
        "running_job_records_during_load": after["progress"]["records"] - before,
        "running_job_status": after["status"], "cpus": os.cpu_count(), "think_ms": think * 1000,
        "api_cpu_ms_per_request": round(cpu * 1000 / max(1, len(posts) + len(reads)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10, help="POSTs per client")
    ap.add_argument("--gets", type=int, default=4, help="GETs of its job after each POST")
    ap.add_argument("--latency", type=float, default=0.05, help="loopback model latency (s)")
    ap.add_argument("--think-ms", type=float, default=0.0, help="pause before each call (0: closed loop)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="synthgen-api-load-"))
    mport, aport = free_port(), free_port()
    env = {**os.environ, "SYNTHGEN_DATA_ROOT": str(tmp), "SYNTHGEN_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite",
           "SYNTHGEN_API_KEYS": "", "SYNTHGEN_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    model = subprocess.Popen([sys.executable, "-m", "synthgen.loopback_server", "--port", str(mport),
                              "--latency", str(args.latency)], env=env)
    api = subprocess.Popen([sys.executable, "-m", "synthgen.service.cli", "serve", "--port", str(aport),
                            "--workers", "1"], env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{aport}/healthz")
        result = asyncio.run(load(f"http://127.0.0.1:{aport}", f"http://127.0.0.1:{mport}/v1", args.clients,
                                  args.rounds, args.gets, args.think_ms / 1000, api.pid))
    finally:
        api.send_signal(signal.SIGINT)
        try:
            api.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
        model.terminate()
        model.wait(10)
    print(f"POST /v1/jobs   p50 {result['post_jobs']['p50_ms']} ms  p99 {result['post_jobs']['p99_ms']} ms "
          f"({result['post_jobs']['n']} requests)", file=sys.stderr)
    print(f"GET /v1/jobs/id p50 {result['get_job']['p50_ms']} ms  p99 {result['get_job']['p99_ms']} ms "
          f"({result['get_job']['n']} requests); the running job wrote "
          f"{result['running_job_records_during_load']} records meanwhile; API CPU "
          f"{result['api_cpu_ms_per_request']} ms/request", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
