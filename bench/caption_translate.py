"""caption-translate throughput with the VLM and the LLM on two loopback endpoints.

The VLM endpoint is the slow one (default 200 ms a request, the LLM 50 ms), as a vision
model is next to a text model. The engine caps each role at the same concurrency C, so the
VLM endpoint can serve at most C / vlm_latency requests/s, and a record needs one VLM
request per style:

    ideal_records_per_s = C / (vlm_latency * styles)      (the slower endpoint's capacity)

The engine reaches it only if translations run behind the captions (a record's
translation starts as soon as its caption is back, while other records' captions are in
flight) and the VLM requests of a record go out together. Each server runs in its own
process; the engine runs here. The last line printed is a JSON object with
records_per_s, ideal_records_per_s and ratio, and
also ratio_vs_measured_vlm_ceiling: records/s against what a bare aiohttp client gets from
the same VLM endpoint at the same concurrency, measured before and after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from throughput import free_port, wait_for_port


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    """A loopback server process answering both generators' prompts (images checked, not decoded)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), "--latency", str(latency)])
    return proc, wait_for_port(proc, port)


def _serve(port: int, latency: float) -> None:
    from aiohttp import web

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only responders
    from image_responders import ImageChecks, image_responder

    from synthgen.loopback_server import LoopbackServer

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    server = LoopbackServer(image_responder(ImageChecks(decode=False)), latency=latency)
    web.run_app(server.app(), host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


async def _vlm_ceiling(base_url: str, concurrency: int, requests: int, image_size: tuple[int, int]) -> float:
    """Requests/s the VLM endpoint really gives a bare aiohttp client at the same concurrency
    (same image payload), measured on this machine as it is now: the practical ceiling."""
    import aiohttp
    import orjson

    from synthgen.engine.messages import image_part
    from synthgen.generators.images.samples import draw, encode

    body = orjson.dumps({"model": "vlm", "max_tokens": 1024, "messages": [{"role": "user", "content": [
        image_part(encode(draw(0, image_size), "JPEG")),
        {"type": "text", "text": "Write one short English sentence that captions this image."}]}]})
    left = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(f"{base_url}/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    assert orjson.loads(await resp.read())["choices"][0]["message"]["content"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


def run(*, records: int = 1500, concurrency: int = 64, vlm_latency: float = 0.2, llm_latency: float = 0.05,
        styles: tuple[str, ...] = ("short", "detailed", "dense"), image_size: tuple[int, int] = (96, 72),
        record_concurrency: int | None = None) -> dict[str, Any]:
    """Run caption-translate for `records` images against two fresh endpoints; returns the figures."""
    from synthgen.engine.runner import install_fast_loop, run_job
    from synthgen.generators.images.samples import write_folder
    from synthgen.spec import JobSpec

    # Enough records in flight that the VLM queue never runs dry while translations finish.
    in_flight = record_concurrency or max(8, 2 * concurrency)
    vlm, vlm_url = start_server(vlm_latency)
    llm, llm_url = start_server(llm_latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_folder(Path(tmp) / "imgs", records, size=image_size)
            spec = JobSpec(generator="caption-translate", n=records, max_inputs=records, concurrency=in_flight,
                           out=str(Path(tmp) / "run"), params={"source": str(Path(tmp) / "imgs"),
                                                                "styles": list(styles)},
                           roles={"vlm": {"base_url": vlm_url, "model": "vlm", "concurrency": concurrency},
                                  "translator": {"base_url": llm_url, "model": "llm", "concurrency": concurrency}})
            install_fast_loop()
            ceiling = [asyncio.run(_vlm_ceiling(vlm_url, concurrency, records * len(styles) // 2, image_size))]
            start, cpu = time.perf_counter(), time.process_time()
            result = asyncio.run(run_job(spec))
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            ceiling.append(asyncio.run(_vlm_ceiling(vlm_url, concurrency, records * len(styles) // 2, image_size)))
    finally:
        for proc in (vlm, llm):
            proc.terminate()
            proc.wait(10)
    done = result.manifest["counts"]["records"]
    if done != records:
        raise RuntimeError(f"only {done} of {records} records written: {result.manifest['failures_by_reason']}")
    vlm_capacity = concurrency / vlm_latency / len(styles)
    llm_capacity = concurrency / llm_latency / len(styles)
    ideal = min(vlm_capacity, llm_capacity)
    rate = records / elapsed  # includes dataset finalisation: what a user waits for
    usage = result.manifest["usage"]
    return {
        "records": records, "styles": len(styles), "role_concurrency": concurrency, "records_in_flight": in_flight,
        "vlm_latency_s": vlm_latency, "llm_latency_s": llm_latency, "elapsed_s": round(elapsed, 2),
        "engine_cpu_s": round(cpu, 2),
        "vlm_requests": usage["vlm"]["requests"], "translator_requests": usage["translator"]["requests"],
        "records_per_s": round(rate, 2), "ideal_records_per_s": round(ideal, 2), "ratio": round(rate / ideal, 3),
        "ideal_definition": "role_concurrency / max(vlm_latency, llm_latency) / styles",
        # the same ceiling as measured here, before and after the run, by a bare client: separates
        # what the generator loses from what a busy machine takes from both
        "vlm_ceiling_rps": round(sum(ceiling) / 2, 1),
        "ratio_vs_measured_vlm_ceiling": round(rate / (sum(ceiling) / 2 / len(styles)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64, help="per-role request concurrency")
    parser.add_argument("--records-in-flight", type=int, help="record concurrency (default 2 x --concurrency)")
    parser.add_argument("--vlm-latency", type=float, default=0.2)
    parser.add_argument("--llm-latency", type=float, default=0.05)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.port, args.latency)
        return
    figures = run(records=args.records, concurrency=args.concurrency, vlm_latency=args.vlm_latency,
                  llm_latency=args.llm_latency, record_concurrency=args.records_in_flight)
    print(f"caption-translate: {figures['records']} records x {figures['styles']} styles in {figures['elapsed_s']} s; "
          f"VLM {figures['vlm_latency_s'] * 1000:.0f} ms, LLM {figures['llm_latency_s'] * 1000:.0f} ms, "
          f"{figures['role_concurrency']} requests in flight per role", file=sys.stderr)
    print(f"ideal (slower endpoint's capacity) = {figures['ideal_definition']} = "
          f"{figures['ideal_records_per_s']} records/s; measured {figures['records_per_s']} records/s "
          f"(ratio {figures['ratio']}); a bare client gets {figures['vlm_ceiling_rps']} VLM req/s here now "
          f"(ratio to that {figures['ratio_vs_measured_vlm_ceiling']})", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
