"""New session on a warm instance: gateway time, excluding the upstream (goal p99 < 5 ms).

    .venv/bin/python bench/bench_session_warm.py [--n 2000] [--http-n 1000]

Part 1, in process: the placement path a new session takes (claim a warm instance this replica
owns, mint nothing, bind, start metering), timed alone. Part 2, over HTTP: a gateway with a warm
pool in front of an upstream; each request carries no session id (a brand-new session on a warm
instance). The same request sent directly to the upstream is the comparison, in the same run and
alternating with it request by request (one client, one request in flight), so both sides see the
same machine; the difference is the time spent in the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, machine, tail, wait_port
from _gateway_server import StaticBackend
from voltgrid.api.function import Function
from voltgrid.backends.base import Instance
from voltgrid.gateway.functions import FunctionCatalog
from voltgrid.gateway.manager import SessionManager
from voltgrid.gateway.metrics import GatewayMetrics
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.registry.ownership import Membership

#: Requests of each side not timed: connections opened, pools and caches filled on both.
WARMUP = 20
#: Seconds a fresh gateway gets to fill its warm pool before the first timed request.
POOL_FILL_S = 3.0


async def in_process(n: int) -> list[float]:
    settings = GatewaySettings(manage_warm_pool=False)
    fn_model = Function.model_validate(
        {"metadata": {"name": "warm", "namespace": "default"}, "spec": {"image": "x", "scaling": {"warmPool": 0}}}
    )
    catalog = FunctionCatalog(settings, [fn_model])
    manager = SessionManager(
        settings, StaticBackend("http://127.0.0.1:1"), catalog, Membership(settings.self_url), GatewayMetrics()
    )
    fn = catalog.get("default/warm")
    assert fn is not None
    for i in range(n):
        manager.warm.offer(
            Instance(id=f"w{i}", function=fn.key, url="http://127.0.0.1:1", session=f"s-warm-{i}", warm=True)
        )
    samples = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            record = await manager.new_session(fn)
            await manager.instance_for(fn, record)
            manager.begin(record)
            samples.append(time.perf_counter() - t0)
    finally:
        await manager.close()  # the claims' background checkpoints
    return samples


async def over_http(n: int) -> tuple[list[float], list[float]]:
    """(direct, via the gateway) latencies of ``n`` alternating requests each."""
    up_port, gw_port = free_port(), free_port()
    helper = str(Path(__file__).parent / "_gateway_server.py")
    upstream = [sys.executable, helper, "upstream", str(up_port)]
    procs = [subprocess.Popen(upstream)]  # noqa: ASYNC220 (a benchmark driver, nothing else runs)
    wait_port(up_port)
    gateway = [sys.executable, helper, "gateway", str(gw_port), f"http://127.0.0.1:{up_port}", "Header", str(n + 50)]
    procs.append(subprocess.Popen(gateway))  # noqa: ASYNC220
    try:
        wait_port(gw_port)
        await asyncio.sleep(POOL_FILL_S)
        direct: list[float] = []
        via: list[float] = []
        async with aiohttp.ClientSession() as http:
            for i in range(n + WARMUP):
                for url, out in ((f"http://127.0.0.1:{up_port}/x", direct), (f"http://127.0.0.1:{gw_port}/x", via)):
                    t0 = time.perf_counter()
                    async with http.get(url) as r:
                        await r.read()
                        assert r.status == 200, r.status
                        if out is via:
                            assert r.headers["X-Voltgrid-Session"].startswith("s-")
                    if i >= WARMUP:
                        out.append(time.perf_counter() - t0)
        return direct, via
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="placements timed in process")
    parser.add_argument("--http-n", type=int, default=1000, help="requests timed over HTTP, each side")
    args = parser.parse_args()
    print(machine())
    placement = asyncio.run(in_process(args.n))
    print(
        f"placement of a new session on a warm instance (in process, n={args.n}): "
        f"p50 {statistics.median(placement) * 1e6:.1f} µs, {tail(placement, 1e6, ' µs')}"
    )
    direct, via = asyncio.run(over_http(args.http_n))
    added = [g - d for d, g in zip(direct, via, strict=True)]
    print(
        f"new session over HTTP (n={args.http_n} each, alternating): "
        f"direct p50 {statistics.median(direct) * 1e3:.2f} ms {tail(direct, 1e3, ' ms')}; "
        f"via gateway p50 {statistics.median(via) * 1e3:.2f} ms {tail(via, 1e3, ' ms')}"
    )
    print(
        f"gateway time excluding upstream (per pair, gateway minus direct): "
        f"p50 {statistics.median(added) * 1e3:.2f} ms, {tail(added, 1e3, ' ms')} (goal p99 < 5 ms)"
    )


if __name__ == "__main__":
    main()
