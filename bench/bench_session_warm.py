"""New session on a warm instance: gateway time, excluding the upstream (goal p99 < 5 ms).

    .venv/bin/python bench/bench_session_warm.py [--n 2000]

Part 1, in process: the placement path a new session takes (claim a warm instance this replica
owns, mint nothing, bind, start metering), timed alone. Part 2, over HTTP: a gateway with a warm
pool in front of an upstream; each request carries no session id (a brand-new session on a warm
instance); the same request sent directly to the upstream is the comparison, and the difference of
the two is the time spent in the gateway.
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
from _gateway_server import StaticBackend
from bench_gateway import free_port, wait_port
from voltgrid.api.function import Function
from voltgrid.backends.base import Instance
from voltgrid.gateway.functions import (
    FunctionCatalog,
    FunctionEntry,
)
from voltgrid.gateway.manager import SessionManager
from voltgrid.gateway.metrics import GatewayMetrics
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.registry.ownership import Membership


def pct(samples: list[float], p: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * p))]


async def in_process(n: int) -> list[float]:
    settings = GatewaySettings(manage_warm_pool=False)
    fn_model = Function.model_validate(
        {"metadata": {"name": "warm", "namespace": "default"}, "spec": {"image": "x", "scaling": {"warmPool": 0}}}
    )
    catalog = FunctionCatalog(settings, [fn_model])
    manager = SessionManager(
        settings, StaticBackend("http://127.0.0.1:1"), catalog, Membership(settings.self_url), GatewayMetrics()
    )
    fn: FunctionEntry = catalog.get("default/warm")  # type: ignore[assignment]
    for i in range(n):
        manager.warm.offer(
            Instance(id=f"w{i}", function=fn.key, url="http://127.0.0.1:1", session=f"s-warm-{i}", warm=True)
        )
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        record = manager.new_session(fn)
        await manager.instance_for(fn, record)
        manager.begin(record)
        samples.append(time.perf_counter() - t0)
    return samples


async def over_http(n: int) -> tuple[list[float], list[float]]:
    up_port, gw_port = free_port(), free_port()
    helper = str(Path(__file__).parent / "_gateway_server.py")
    procs = [subprocess.Popen([sys.executable, helper, "upstream", str(up_port)])]  # noqa: ASYNC220
    wait_port(up_port)
    procs.append(
        subprocess.Popen(  # noqa: ASYNC220
            [
                sys.executable,
                helper,
                "gateway",
                str(gw_port),
                f"http://127.0.0.1:{up_port}",
                "Header",
                str(n + 50),
            ]
        )
    )
    try:
        wait_port(gw_port)
        await asyncio.sleep(3)  # let the warm pool fill
        direct, via = [], []
        async with aiohttp.ClientSession() as http:
            for i in range(n):
                for url, out in ((f"http://127.0.0.1:{up_port}/x", direct), (f"http://127.0.0.1:{gw_port}/x", via)):
                    t0 = time.perf_counter()
                    async with http.get(url) as r:
                        await r.read()
                        assert r.status == 200
                        if out is via:
                            assert r.headers["X-Voltgrid-Session"].startswith("s-")
                    if i >= 20:
                        out.append(time.perf_counter() - t0)
        return direct, via
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    placement = asyncio.run(in_process(args.n))
    print(
        f"placement of a new session on a warm instance (in process, n={args.n}): "
        f"p50 {statistics.median(placement) * 1e6:.1f} µs, p99 {pct(placement, 0.99) * 1e6:.1f} µs"
    )
    direct, via = asyncio.run(over_http(min(args.n, 1000)))
    d50, d99, g50, g99 = (statistics.median(direct), pct(direct, 0.99), statistics.median(via), pct(via, 0.99))
    print(
        f"new session over HTTP: direct p50 {d50 * 1e3:.2f} ms p99 {d99 * 1e3:.2f} ms; "
        f"via gateway p50 {g50 * 1e3:.2f} ms p99 {g99 * 1e3:.2f} ms"
    )
    print(
        f"gateway time excluding upstream: p50 {(g50 - d50) * 1e3:.2f} ms, p99 {(g99 - d99) * 1e3:.2f} ms "
        f"(goal p99 < 5 ms)"
    )


if __name__ == "__main__":
    main()
