"""Gateway added latency and throughput, beside direct calls to the upstream, in one run.

    .venv/bin/python bench/bench_gateway.py [--requests 2000] [--duration 10] [--rounds 2]

Starts an aiohttp upstream, one gateway process (Header affinity, every request in the same
session) and a bare aiohttp relay (one handler, one pooled client call: the floor of any aiohttp
proxy on the machine). Every target is warmed the same way before anything is timed.

Added latency (goal p99 < 2 ms): one client sends ``--requests`` pairs, each a request straight
to the upstream and the same request through the gateway back to back, with ``--concurrency``
pairs in flight; the added latency of a pair is its gateway time minus its direct time, so both
sides of every difference saw the same moment of the machine.

Throughput (goal >= 5,000 req/s through one gateway; needs ``wrk``, skipped without it): wrk at
concurrency 10 and 200 against direct, gateway and bare relay in turn, ``--rounds`` times in
alternation, each target's best round reported.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from _common import WrkRun, free_port, machine, tail, wait_port, wrk

HERE = Path(__file__).parent
HEADER = ("X-Voltgrid-Session", "bench-session-1")
#: Untimed requests per target before any measurement: connections, pools, the session bound.
WARMUP_REQUESTS = 200
WARMUP_WRK_S = 2


async def paired(direct: str, gateway: str, requests: int, concurrency: int) -> tuple[list[float], list[float]]:
    """(direct, gateway) latencies of ``requests`` back-to-back pairs, ``concurrency`` pairs in flight."""
    connector = aiohttp.TCPConnector(limit=0)
    headers = dict([HEADER])
    d_out: list[float] = []
    g_out: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as http:

        async def timed(url: str, hdrs: dict[str, str] | None) -> float:
            t0 = time.perf_counter()
            async with http.get(url, headers=hdrs) as r:
                await r.read()
                assert r.status == 200, r.status
            return time.perf_counter() - t0

        async def worker(count: int, record: bool) -> None:
            for _ in range(count):
                d = await timed(direct, None)
                g = await timed(gateway, headers)
                if record:
                    d_out.append(d)
                    g_out.append(g)

        share = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
        warm = max(1, WARMUP_REQUESTS // concurrency)
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))  # both sides warmed alike
        await asyncio.gather(*(worker(n, True) for n in share))
    return d_out, g_out


def throughput(targets: dict[str, str], duration: int, rounds: int) -> None:
    header = f"{HEADER[0]}: {HEADER[1]}"
    for url in targets.values():  # every side warmed the same way before timing
        wrk(url, 10, WARMUP_WRK_S, header=header)
    print(f"{'target':<9}{'conc':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}  (best of {rounds} rounds)")
    for connections in (10, 200):
        best: dict[str, WrkRun] = {}
        for _ in range(rounds):  # alternate the targets so a slow moment of the machine hits all of them
            for name, url in targets.items():
                r = wrk(url, connections, duration, header=header if name == "gateway" else None)
                if name not in best or r.rps > best[name].rps:
                    best[name] = r
        for name, r in best.items():
            print(f"{name:<9}{connections:>6}{r.rps:>11,.0f}{r.p50:>9.2f}{r.p99:>9.2f}{r.non_2xx:>9}")
        print(
            f"  -> gateway/direct throughput {best['gateway'].rps / best['direct'].rps:.2f}, "
            f"gateway/bare-aiohttp-relay {best['gateway'].rps / best['bare'].rps:.2f} (goal >= 5000 req/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="timed pairs for the added latency")
    parser.add_argument("--concurrency", type=int, default=10, help="pairs in flight for the added latency")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating wrk rounds per concurrency")
    parser.add_argument(
        "--throughput", action=argparse.BooleanOptionalAction, default=True, help="the wrk part (--no-throughput: skip)"
    )
    args = parser.parse_args()
    print(machine())
    up_port, gw_port, bare_port = free_port(), free_port(), free_port()
    helper = str(HERE / "_gateway_server.py")
    procs = [subprocess.Popen([sys.executable, helper, "upstream", str(up_port)])]
    wait_port(up_port)
    procs.append(subprocess.Popen([sys.executable, helper, "gateway", str(gw_port), f"http://127.0.0.1:{up_port}"]))
    procs.append(subprocess.Popen([sys.executable, helper, "bare", str(bare_port), f"http://127.0.0.1:{up_port}"]))
    try:
        wait_port(gw_port)
        wait_port(bare_port)
        targets = {
            "direct": f"http://127.0.0.1:{up_port}/x",
            "gateway": f"http://127.0.0.1:{gw_port}/x",
            "bare": f"http://127.0.0.1:{bare_port}/x",
        }
        direct, via = asyncio.run(paired(targets["direct"], targets["gateway"], args.requests, args.concurrency))
        added = [g - d for d, g in zip(direct, via, strict=True)]
        print(
            f"added latency, {args.requests} pairs at concurrency {args.concurrency}: "
            f"direct p50 {statistics.median(direct) * 1e3:.2f} ms {tail(direct, 1e3, ' ms')}; "
            f"gateway p50 {statistics.median(via) * 1e3:.2f} ms {tail(via, 1e3, ' ms')}; "
            f"added (per pair) p50 {statistics.median(added) * 1e3:.2f} ms {tail(added, 1e3, ' ms')} (goal p99 < 2 ms)"
        )
        if not args.throughput:
            print("throughput SKIPPED: --no-throughput")
        elif shutil.which("wrk"):
            throughput(targets, args.duration, args.rounds)
        else:
            print("throughput SKIPPED: wrk is not installed (apt-get install wrk)")
    finally:
        for p in reversed(procs):  # proxies first, then the upstream
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
