"""Curation benchmark: dedup of generated Japanese records, and the judge step's throughput
against a loopback judge relative to that endpoint's capacity.

(1) dedup: `--records` (default 200k) generated Japanese Q&A records (synthgen.quality.planted,
    with ~10% planted repeats) are written to a dataset folder, then `curate IN OUT --steps
    dedup` runs in a fresh process: records/s over the whole pass (read, normalise, MinHash,
    LSH, confirm, write) and that process's peak RSS (VmHWM).
(2) judge: `--judge-records` records through `dedup,judge` against a loopback OpenAI-compatible
    judge (its own process, fixed latency, JSON replies). The endpoint's capacity is measured
    the way bench/throughput.py measures its ceiling: a plain aiohttp client at the same
    concurrency, alternating with the judge run for `--rounds` rounds on this shared machine.
    ratio = judge requests/s / capacity, the median of the rounds (target >= 0.8).

The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _ceiling, free_port, wait_for_port  # the same ceiling client


def _write_dataset(path: Path, n: int, dup_share: float) -> int:
    """Streamed to disk (Dataset.from_generator), so a million records never sit in memory."""
    import datasets

    from synthgen.quality.planted import planted_stream

    def rows():
        for r in planted_stream(n, dup_share=dup_share, seed=11):
            yield {"key": r["key"], "messages": [{"role": "user", "content": r["question"]},
                                                 {"role": "assistant", "content": r["answer"]}], "task": "math"}

    with tempfile.TemporaryDirectory() as cache:
        datasets.Dataset.from_generator(rows, cache_dir=cache).save_to_disk(str(path))
    return n


def _judge_server(port: int, latency: float) -> None:
    import orjson
    from aiohttp import web

    from synthgen.loopback_server import LoopbackServer

    def judge(_body: dict) -> str:
        return orjson.dumps({"correctness": 4, "helpfulness": 4, "fluency": 5, "reason": "概ね良い"}).decode()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    server = LoopbackServer(judge, latency=latency)
    web.run_app(server.app(), host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


def _curate_child(src: str, out: str, steps: str, base_url: str | None, concurrency: int) -> dict:
    from synthgen.quality.curate import curate_async

    async def go() -> dict:
        roles = {}
        if base_url:
            from synthgen.engine.roles import build_roles, resolve_roles
            from synthgen.spec import RoleConfig

            roles = build_roles(resolve_roles({"judge": RoleConfig(base_url=base_url, model="judge",
                                                                   concurrency=concurrency)}, ("judge",)))
        start = time.perf_counter()
        manifest = await curate_async(src, out, steps, judge_role=roles.get("judge"), batch_size=1024)
        elapsed = time.perf_counter() - start
        for role in roles.values():
            await role.client.aclose()
        requests = manifest.get("judge", {}).get("usage", {}).get("requests", 0)
        return {"records": manifest["input_rows"], "kept": manifest["output_rows"], "dropped": manifest["dropped"],
                "elapsed_s": round(elapsed, 2), "records_per_s": round(manifest["input_rows"] / elapsed, 1),
                "judge_requests": requests, "judge_rps": round(requests / elapsed, 1) if requests else None,
                "peak_rss_mb": _peak_rss_mb()}

    return asyncio.run(go())


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage: on Linux ru_maxrss survives exec, so a
    child started by a parent holding the generated corpus would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _child(kind: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, *args], check=True, capture_output=True,
                         text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--judge-records", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=15.0, help="capacity measurement length")
    parser.add_argument("--rounds", type=int, default=3, help="alternating capacity/judge rounds (median ratio)")
    parser.add_argument("--no-judge", action="store_true", help="the dedup measurement only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "curate":
        src, out, steps, base_url = args.rest
        print(json.dumps(_curate_child(src, out, steps, base_url or None, args.concurrency)))
        return
    if args.child == "server":
        _judge_server(int(args.rest[0]), args.latency)
        return
    if args.child == "capacity":
        print(json.dumps({"rps": asyncio.run(_ceiling(args.rest[0], args.concurrency, args.seconds))}))
        return

    result: dict = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        n = _write_dataset(t / "in", args.records, 0.1)
        dedup = _child("curate", str(t / "in"), str(t / "out"), "dedup", "")
        result["dedup"] = dedup
        print(f"dedup: {n:,} records, {dedup['records_per_s']:,} rec/s, peak RSS {dedup['peak_rss_mb']} MB, "
              f"dropped {dedup['dropped']}", file=sys.stderr)
        if args.no_judge:
            result["load_after"] = os.getloadavg()
            print(json.dumps(result))
            return
        _write_dataset(t / "jin", args.judge_records, 0.1)
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--child", "server", "--latency", str(args.latency),
                                   str(port)])
        rounds = []
        try:
            base_url = wait_for_port(server, port)
            for r in range(args.rounds):  # alternate, so a load swing hits both sides alike
                capacity = _child("capacity", "--concurrency", str(args.concurrency), "--seconds",
                                  str(args.seconds), base_url)["rps"]
                judged = _child("curate", "--concurrency", str(args.concurrency), str(t / "jin"),
                                str(t / f"jout{r}"), "dedup,judge", base_url)
                rounds.append({"capacity_rps": round(capacity, 1), "judge_rps": judged["judge_rps"],
                               "ratio": round(judged["judge_rps"] / capacity, 3), "load": os.getloadavg()[0]})
                print(f"judge round {r + 1}: {judged['judge_rps']} req/s vs endpoint capacity {capacity:.1f} req/s",
                      file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)
        ratio = statistics.median(x["ratio"] for x in rounds)
        result["judge"] = {**judged, "capacity_rps": statistics.median(x["capacity_rps"] for x in rounds),
                           "judge_rps": statistics.median(x["judge_rps"] for x in rounds), "ratio": ratio,
                           "rounds": rounds, "concurrency": args.concurrency, "latency_s": args.latency,
                           "ideal_rps": round(args.concurrency / args.latency, 1)}
        print(f"judge: ratio to the endpoint's capacity {ratio:.3f} (median of {len(rounds)})", file=sys.stderr)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
