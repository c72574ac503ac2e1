"""The gateway's own CPU per request, in one process, without sockets: the data path's Python cost.

    .venv/bin/python bench/bench_gateway_cpu.py [--requests 20000] [--connections 10] [--rounds 7]

The real :class:`~voltgrid.gateway.pipeline.Pipeline` (limits, tracing decision, route, auth,
Header affinity, ownership, placement, metering, metrics) answers keep-alive requests that
``--connections`` client connections send one after another, each for one of 64 sessions in turn;
the upstream is a pooled :class:`~voltgrid.gateway.upstream.UpstreamConnection` answering nginx's
200 with 1 KiB. Both ends are transports in memory (a write schedules the other side's bytes on
the loop), so what is timed is the process's CPU (``time.process_time``) per request in the gateway
code, httptools, multidict and the loop, without the four socket calls a real request adds (about
25-30 µs on the 2-core VM: ``perf`` of the bench gateway under wrk puts ~24% of its CPU in the
kernel). Rounds take turns with the machine's other work; the best round is the least disturbed.

Instructions per request, which the machine's load does not change, come from the same loop under
callgrind, as the difference of two sizes (the fixed start-up cancels out)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect=uv_run \\
        .venv/bin/python bench/bench_gateway_cpu.py --rounds 1 --requests N

for N = 1000 and 3000: (collected(3000) - collected(1000)) / 2000.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine
from _gateway_server import StaticBackend
from voltgrid.api.function import Function
from voltgrid.gateway.app import GatewayServer
from voltgrid.gateway.http1 import ClientConnection, ConnectionGuard
from voltgrid.gateway.pipeline import Pipeline
from voltgrid.gateway.proxy import Target
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.gateway.upstream import UpstreamConnection

SESSIONS: Final = 64
UPSTREAM: Final = "http://127.0.0.1:9"  # never dialled: the pool's connections are in memory
#: nginx's answer to GET /1k (the upstream of bench_proxies.py), headers as nginx sends them.
ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 08 Dec 2026 01:15:06 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Tue, 08 Dec 2026 01:10:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6755a1b8-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024
)


class _Transport:
    """Enough of an asyncio transport for the two protocols; ``sent`` is called with each write."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.closing = False
        self.sent: Any = None

    def write(self, data: bytes) -> None:
        self.sent(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Round:
    """``total`` answers over the connections; ``done`` resolves at the last one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, total: int) -> None:
        self.loop = loop
        self.total = total
        self.answered = 0
        self.bad = 0
        self.done: asyncio.Future[None] = loop.create_future()

    def client(self, conn: ClientConnection, request: bytes) -> _Transport:
        transport = _Transport(("127.0.0.1", 40000))

        def answered(data: bytes) -> None:
            self.answered += 1
            self.bad += not data.startswith(b"HTTP/1.1 200 ")
            if self.answered >= self.total:
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.loop.call_soon(conn.data_received, request)  # the next request on this connection

        transport.sent = answered
        return transport


async def measure(connections: int, requests: int, rounds: int) -> list[float]:
    loop = asyncio.get_running_loop()
    fn = Function.model_validate(
        {
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "image": "x",
                "sessions": {"affinity": "Header"},
                "scaling": {"warmPool": 0, "maxInstances": 10000, "concurrency": 10000},
            },
        }
    )
    settings = GatewaySettings(host="127.0.0.1", port=1, default_function="default/bench", session_mint_burst=0)
    server = GatewayServer(settings, StaticBackend(UPSTREAM), [fn])
    gw = server.gateway
    await gw.start()

    async def in_memory(key: str, host: str, port: int | None, seconds: float) -> UpstreamConnection:
        conn = UpstreamConnection(gw.pool, key)
        transport = _Transport((host, port or 80))
        transport.sent = lambda _: loop.call_soon(conn.data_received, ANSWER)
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn

    gw.pool._open = in_memory  # type: ignore[method-assign]
    pipeline = Pipeline(gw, Target("/nonexistent", None))  # no admin path is requested
    guard = ConnectionGuard(settings)
    figures = []
    try:
        for _ in range(rounds):
            this = _Round(loop, requests)
            started = []
            for i in range(connections):
                request = (
                    b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Voltgrid-Session: bench-session-%d\r\n\r\n"
                    % (i % SESSIONS + 1)
                )
                conn = ClientConnection(guard, pipeline)
                conn.connection_made(this.client(conn, request))  # type: ignore[arg-type]
                started.append((conn, request))
            cpu = time.process_time()
            for conn, request in started:
                loop.call_soon(conn.data_received, request)
            await this.done
            figures.append((time.process_time() - cpu) / requests * 1e6)
            for conn, _ in started:
                conn.connection_lost(None)
            if this.bad:
                raise RuntimeError(f"{this.bad} answers were not 200")
            await asyncio.sleep(0.05)  # the last requests' tasks end before the next round
    finally:
        await gw.stop()
        gw.pool.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="requests per round")
    parser.add_argument("--connections", type=int, default=10, help="client connections, each keep-alive")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(machine())
    figures = uvloop.run(measure(args.connections, args.requests, args.rounds))
    print(f"# {args.rounds} round(s) of {args.requests} requests on {args.connections} connections, 64 sessions")
    print("rounds, µs of CPU per request: " + " ".join(f"{f:.1f}" for f in figures))
    print(
        f"gateway CPU per request, in process, no sockets: best {min(figures):.1f} µs, "
        f"median {statistics.median(figures):.1f} µs"
    )


if __name__ == "__main__":
    main()
