"""Scale-out: the same persona-qa job against 1, 2 and 4 simulated GPUs, local and on Ray.

Each endpoint is a loopback OpenAI-compatible server that serves at most `--slots` requests
at a time, each taking `--service-s` seconds (a GPU with a fixed batch: more requests queue),
so one endpoint's ceiling is slots / service_s requests/s and k endpoints' is k times that.
All endpoints run in one child process. The job's role lists every endpoint (`base_urls`, an
endpoint pool) and runs through (a) the local executor and (b) the Ray executor on a local Ray
(`--ray-workers` actors). Records in flight: 2 x slots x k, so every slot is kept busy.

records/s is measured in the steady state (from 10 % to 90 % of the records, sampled at each
commit), so Ray's actor start-up and the final dataset write are not counted. The last line
is a JSON object: records/s per executor and endpoint count, the ceiling, and
`efficiency` = records/s at 4 endpoints / (4 x records/s at 1) for the Ray executor (target
>= 0.8); `efficiency_local` likewise for the local one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENDPOINTS = (1, 2, 4)


# -- the simulated GPUs (child process) ------------------------------------------------------
def _reply(body: dict[str, Any]) -> str:
    """persona-qa replies that pass its checks (no record dropped)."""
    from synthgen.loopback_server import japanese_responder, last_user_text

    text = japanese_responder(body)
    prompt = last_user_text(body)
    return text if "問題を一つ作って" in prompt or "追加の質問" in prompt else text + "\n答え：6分"


def serve(count: int, slots: int, service_s: float) -> None:
    from aiohttp import web

    from synthgen.loopback_server import LoopbackServer

    class Gpu(LoopbackServer):
        """At most `slots` requests served at once, each taking `service_s`; the rest queue."""

        def __init__(self) -> None:
            super().__init__(_reply)
            self.sem: asyncio.Semaphore | None = None

        async def _chat(self, request: web.Request) -> web.Response:
            if self.sem is None:
                self.sem = asyncio.Semaphore(slots)
            async with self.sem:
                await asyncio.sleep(service_s)
                return await super()._chat(request)

    async def main() -> None:
        gpus = [Gpu() for _ in range(count)]
        for gpu in gpus:
            await gpu.start_async()
        print(json.dumps([g.base_url for g in gpus]), flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())


def start_gpus(count: int, slots: int, service_s: float) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(count), "--slots", str(slots),
                             "--service-s", str(service_s)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError("the simulated GPU servers did not start")
    return proc, json.loads(line)


# -- one measured run ----------------------------------------------------------------------
def steady_rate(samples: list[tuple[float, int]], n: int) -> float:
    """records/s in the steady state: the least-squares slope of records over time through the
    commits between 10 % and 90 % of n (commits come in bursts; a slope through all of them is
    steadier than two end points)."""
    window = [(t, r) for t, r in samples if 0.1 * n <= r <= 0.9 * n]
    if len({t for t, _ in window}) < 3:
        raise RuntimeError(f"too few progress samples to measure a steady rate: {samples}")
    times, records = zip(*window, strict=True)
    return statistics.linear_regression(times, records).slope


async def run_once(executor: str, urls: list[str], n: int, concurrency: int, out: Path, ray_workers: int) -> float:
    from synthgen.engine.runner import run_job
    from synthgen.spec import JobSpec, RoleConfig

    spec = JobSpec(generator="persona-qa", n=n, seed=1, concurrency=concurrency, out=str(out), flush_seconds=0.1,
                   params={"turns": 1}, roles={"default": RoleConfig(base_urls=urls, model="m", concurrency=4096)})
    samples: list[tuple[float, int]] = []

    def on_flush(stats: Any) -> None:
        samples.append((time.monotonic(), stats.records))

    if executor == "ray":
        from synthgen.engine.ray_executor import run_job_ray

        result = await run_job_ray(spec, on_flush=on_flush, workers=ray_workers)
    else:
        result = await run_job(spec, on_flush=on_flush)
    if result.stats.state != "succeeded" or result.manifest["counts"]["failed"]:
        raise RuntimeError(f"{executor} run did not write {n} clean records: {result.manifest['counts']} "
                           f"{result.manifest['failures_by_reason']} {result.manifest['notes']}")
    samples.append((time.monotonic(), result.stats.records))
    return steady_rate(samples, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=4, help="requests one simulated GPU serves at once")
    parser.add_argument("--service-s", type=float, default=0.2, help="seconds one request takes on it")
    parser.add_argument("--seconds", type=float, default=8.0, help="about how long each measured run lasts")
    parser.add_argument("--ray-workers", type=int, default=2, help="Ray record workers (actors)")
    parser.add_argument("--executors", default="local,ray")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.slots, args.service_s)
        return

    import ray

    from synthgen.engine.runner import install_fast_loop

    install_fast_loop()
    executors = args.executors.split(",")
    if "ray" in executors:
        ray.init(num_cpus=max(2, args.ray_workers), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    per_endpoint = args.slots / args.service_s / 2  # records/s: persona-qa with turns=1 sends 2 requests
    rates: dict[str, dict[str, float]] = {e: {} for e in executors}
    ceiling: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in ENDPOINTS:
            proc, urls = start_gpus(k, args.slots, args.service_s)
            try:
                ceiling[str(k)] = round(per_endpoint * k, 2)
                n = max(40, int(per_endpoint * k * args.seconds))
                for executor in executors:
                    out = Path(tmp) / f"{executor}-{k}"
                    rate = asyncio.run(run_once(executor, urls, n, 2 * args.slots * k, out, args.ray_workers))
                    rates[executor][str(k)] = round(rate, 2)
                    print(f"{executor:5s} {k} endpoint(s): {rate:7.2f} records/s (ceiling {ceiling[str(k)]})",
                          file=sys.stderr, flush=True)
            finally:
                proc.kill()
                proc.wait()
    if "ray" in executors:
        ray.shutdown()

    def efficiency(r: dict[str, float]) -> float | None:
        return round(r["4"] / (4 * r["1"]), 3) if "4" in r and r.get("1") else None

    load = os.getloadavg()
    print(json.dumps({
        "records_per_s": rates, "ceiling_records_per_s": ceiling,
        "efficiency": efficiency(rates["ray"]) if "ray" in rates else None,
        "efficiency_local": efficiency(rates["local"]) if "local" in rates else None,
        "slots": args.slots, "service_s": args.service_s, "ray_workers": args.ray_workers,
        "cpus": os.cpu_count(), "loadavg_1m": round(load[0], 2),
    }))


if __name__ == "__main__":
    main()
