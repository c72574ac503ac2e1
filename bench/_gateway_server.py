"""Helper processes of the gateway benchmarks: a tiny upstream, and a gateway whose instance is it.

    python bench/_gateway_server.py upstream PORT
    python bench/_gateway_server.py gateway PORT UPSTREAM_URL [AFFINITY [WARM_POOL]] [--workers N]
    python bench/_gateway_server.py bare PORT UPSTREAM_URL
    python bench/_gateway_server.py grpc-upstream PORT

``bare`` is the floor for any aiohttp-based proxy on the machine: one handler, one pooled client
call, no routing, sessions, metrics or tracing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator

import aiohttp
import grpc
import uvloop
from aiohttp import web

from voltgrid.api.function import Function
from voltgrid.backends.base import Instance, function_key
from voltgrid.gateway.app import GatewayServer, run_gateway
from voltgrid.gateway.settings import ENV_PREFIX, GatewaySettings
from voltgrid.gateway.workers import WORKER_ENV, Supervisor


class StaticBackend:
    """Every instance is the one upstream (the benchmark measures the gateway, not process starts)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.n = 0

    async def create(self, function: Function, session_id: str, *, warm: bool = False) -> Instance:
        self.n += 1
        return Instance(
            id=f"static-{self.n}", function=function_key(function), url=self.url, session=session_id, warm=warm
        )

    async def delete(self, instance: Instance) -> None:
        pass

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        return []

    async def checkpoint(self, instance: Instance, when: float) -> None:
        """Nobody watches these instances: nothing to record (a no-op, as the protocol allows)."""

    async def close(self) -> None:
        pass


def upstream(port: int) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


GRPC_SERVICE = "voltgrid.bench.Echo"


def grpc_upstream(port: int) -> None:
    """A grpcio server: ``Unary`` echoes its message, ``Stream`` sends its message's count of 100-byte messages."""

    async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        for _ in range(int(request)):
            yield b"x" * 100

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def bare(port: int, upstream_url: str) -> None:
    async def relay(request: web.Request) -> web.Response:
        async with request.app[CLIENT].get(upstream_url + request.path) as r:
            return web.Response(body=await r.read(), status=r.status)

    async def client(app: web.Application) -> AsyncIterator[None]:
        app[CLIENT] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[CLIENT].close()

    app = web.Application()
    app.cleanup_ctx.append(client)
    app.router.add_route("*", "/{tail:.*}", relay)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("client", aiohttp.ClientSession)


def gateway(port: int, upstream_url: str, affinity: str, warm_pool: int, workers: int) -> None:
    """The gateway as deployed, on one upstream; with ``workers`` > 1 run as the CLI runs it: a
    supervisor and that many worker processes, each a ring member."""
    index = os.environ.get(WORKER_ENV)
    if workers > 1 and index is None:
        token = {f"{ENV_PREFIX}INTERNAL_TOKEN": secrets.token_hex(16)}
        sys.exit(Supervisor([sys.executable, *sys.argv], workers, token).run())
    fn = Function.model_validate(
        {
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "image": "x",
                "sessions": {"affinity": affinity},
                "scaling": {"warmPool": warm_pool, "maxInstances": 10000, "concurrency": 10000},
            },
        }
    )
    # Every request mints a session (no id sent): the per-client mint limit is off for the measurement.
    settings = GatewaySettings(
        host="127.0.0.1",
        port=port,
        default_function="default/bench",
        session_mint_burst=0,
        workers=workers,
        internal_token=os.environ.get(f"{ENV_PREFIX}INTERNAL_TOKEN", ""),  # the supervisor's, shared
    )
    if index is not None:
        settings = settings.for_worker(int(index))
    server = GatewayServer(settings, StaticBackend(upstream_url), [fn])
    uvloop.run(run_gateway(server, reuse_port=index is not None))


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        upstream(int(sys.argv[2]))
    elif sys.argv[1] == "grpc-upstream":
        grpc_upstream(int(sys.argv[2]))
    elif sys.argv[1] == "bare":
        bare(int(sys.argv[2]), sys.argv[3])
    else:
        args = sys.argv[2:]
        count = 1
        if "--workers" in args:
            at = args.index("--workers")
            count = int(args[at + 1])
            del args[at : at + 2]
        gateway(
            int(args[0]),
            args[1],
            args[2] if len(args) > 2 else "Header",
            int(args[3]) if len(args) > 3 else 0,
            count,
        )
