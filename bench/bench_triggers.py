"""Events through one dispatcher replica vs a bare consumer doing the same HTTP POST (goal >= 0.8x).

    .venv/bin/python bench/bench_triggers.py [--n 5000] [--latency-n 300] [--prefetch 32]

A private Redis (redis-server from Debian, on loopback, in a temporary directory) holds a stream of
``--n`` entries; a handler on loopback answers each POST 200. Throughput: the Redis Streams trigger
consumer (binary-mode CloudEvent, session key, per-key lanes, retries policy, metrics, XACK after the
2xx) drains the backlog; the comparison, in the same run on the same stream contents, is a bare
consumer: XREADGROUP, the same POST with the same concurrency, XACK. Latency: one event at a time,
XADD to the handler receiving it, for each side. The handler is the same for both, so the
difference is the dispatcher's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, machine, percentile, skip, tail, wait_port
from voltgrid.api.function import SessionPolicy
from voltgrid.api.triggers import Retry, SessionFrom, SessionSource
from voltgrid.triggers.dispatch import Dispatcher, Target
from voltgrid.triggers.events import invoke_url
from voltgrid.triggers.redis_streams import RedisStreamConsumer
from voltgrid.triggers.retry import Backoff


class Handler:
    """Counts POSTs and, for entries in ``sent`` (entry id -> XADD time), notes how long they took."""

    def __init__(self) -> None:
        self.count = 0
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.count += 1
        entry = request.headers.get("ce-id") or request.headers.get("X-Entry") or ""
        if (sent := self.sent.pop(entry, None)) is not None:
            self.latencies.append(time.perf_counter() - sent)
        self.arrived.set()
        return web.Response(text="ok")


async def fill(r: aioredis.Redis, stream: str, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"data": b'{"n": 1}', "key": f"k{i % 64}"})
    await pipe.execute()


async def bare(r: aioredis.Redis, http: aiohttp.ClientSession, *, stream: str, url: str, n: int, prefetch: int) -> None:
    """The comparison: XREADGROUP, POST, XACK; ``prefetch`` in flight; no CloudEvent, no lanes."""
    await r.xgroup_create(stream, "g", id="0", mkstream=True)
    slots = asyncio.Semaphore(prefetch)
    taken = in_flight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        nonlocal in_flight
        try:
            async with http.post(url, data=fields[b"data"], headers={"X-Entry": entry_id.decode()}) as resp:
                await resp.read()
            await r.xack(stream, "g", entry_id)
        finally:
            in_flight -= 1
            slots.release()

    while taken < n:
        await slots.acquire()  # like the dispatcher: read only into free slots
        held = True
        read: Any = await r.xreadgroup("g", "bare", {stream: ">"}, count=prefetch - in_flight, block=100)
        for entry_id, fields in read[0][1] if read else []:
            if not held:
                await slots.acquire()
            held = False
            taken += 1
            in_flight += 1
            task = asyncio.create_task(one(entry_id, fields))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if held:
            slots.release()
    await asyncio.gather(*tasks)


async def dispatched(
    r: aioredis.Redis, http: aiohttp.ClientSession, *, stream: str, url: str, handler: Handler, n: int, prefetch: int
) -> None:
    target = Target("bench/fn/t", url, SessionPolicy(), SessionFrom(source=SessionSource.KEY), Backoff.of(Retry()))
    consumer = RedisStreamConsumer(
        r, stream, group="g", consumer="d", dead_letter=f"{stream}.dead", prefetch=prefetch,
        dispatcher=Dispatcher(http), target=target, block=0.1,
    )  # fmt: skip
    task = asyncio.create_task(consumer.run())
    try:
        while handler.count < n:
            handler.arrived.clear()
            await handler.arrived.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run(args: argparse.Namespace, redis_url: str) -> None:
    handler = Handler()
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = invoke_url(f"http://127.0.0.1:{port}", "bench", "fn", "/")
    r = aioredis.Redis.from_url(redis_url)
    results: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.prefetch)) as http:
            for round_ in range(args.rounds):
                for side in ("bare", "dispatcher"):
                    stream = f"{side}-{round_}"
                    await fill(r, stream, args.n)
                    handler.count = 0
                    start = time.perf_counter()
                    if side == "bare":
                        await bare(r, http, stream=stream, url=url, n=args.n, prefetch=args.prefetch)
                    else:
                        await r.xgroup_create(stream, "g", id="0")
                        await dispatched(
                            r, http, stream=stream, url=url, handler=handler, n=args.n, prefetch=args.prefetch
                        )
                    rate = args.n / (time.perf_counter() - start)
                    results[side] = max(results.get(side, 0.0), rate)
            print(f"throughput (best of {args.rounds}, n={args.n}, prefetch={args.prefetch}):")
            for side, rate in results.items():
                print(f"  {side:<10} {rate:8.0f} events/s")
            print(f"  ratio dispatcher/bare: {results['dispatcher'] / results['bare']:.2f} (goal >= 0.8)")
            print(f"latency XADD -> handler, one event in flight (n={args.latency_n}):")
            for side in ("bare", "dispatcher"):
                handler.latencies.clear()
                stream = f"{side}-latency"
                await r.xgroup_create(stream, "g", id="0", mkstream=True)
                consume = asyncio.create_task(
                    bare(r, http, stream=stream, url=url, n=args.latency_n, prefetch=1)
                    if side == "bare"
                    else dispatched(r, http, stream=stream, url=url, handler=handler, n=10**9, prefetch=1)
                )
                if side == "bare":
                    await r.xgroup_destroy(stream, "g")  # bare creates its own
                for i in range(args.latency_n):
                    before = len(handler.latencies)
                    entry = f"1-{i + 1}"  # chosen here, so the handler knows it before the entry exists
                    handler.sent[entry] = time.perf_counter()
                    await r.xadd(stream, {"data": b"{}"}, id=entry)
                    while len(handler.latencies) == before:
                        handler.arrived.clear()
                        await handler.arrived.wait()
                consume.cancel()
                await asyncio.gather(consume, return_exceptions=True)
                lat = handler.latencies
                print(f"  {side:<10} p50 {percentile(lat, 0.5) * 1e3:.2f} ms  {tail(lat, 1e3, ' ms')}")
    finally:
        await r.aclose()
        await runner.cleanup()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so a killed run still stops its redis-server
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="events per throughput run")
    p.add_argument("--latency-n", type=int, default=300, help="events timed one at a time")
    p.add_argument("--prefetch", type=int, default=32, help="events in flight (both sides)")
    p.add_argument("--rounds", type=int, default=2, help="throughput runs per side (the best counts)")
    args = p.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        skip("needs redis-server (apt-get install -y redis-server, or e2e/cluster/install-deps.sh)")
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", tmp, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(port)
            asyncio.run(run(args, f"redis://127.0.0.1:{port}/0"))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
