"""Gateway fixtures: real gateways on loopback ports, with the local-process backend or a fake one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gwhelpers import ADMIN_TOKEN, TOKEN, Replica, serving

from ports import free_port
from voltgrid.api.function import Function
from voltgrid.backends.base import InstanceBackend
from voltgrid.backends.local import LocalProcessBackend
from voltgrid.gateway.app import GatewayServer
from voltgrid.gateway.sandboxes import PoolPods
from voltgrid.gateway.settings import GatewaySettings

StartReplicas = Callable[..., Any]


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[StartReplicas]:
    """``await start(functions, n=1, **settings)`` -> list of Replica sharing one instance state dir."""
    started: list[Replica] = []
    backends: list[LocalProcessBackend] = []

    async def start(
        functions: list[Function],
        n: int = 1,
        backend: InstanceBackend | None = None,
        pool_pods: PoolPods | None = None,
        **overrides: Any,
    ) -> list[Replica]:
        ports = [free_port() for _ in range(n)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        out = []
        for port, url in zip(ports, urls, strict=True):
            b = backend
            if b is None:
                local = LocalProcessBackend(tmp_path / "state", tmp_path / "storage", ready_timeout=20)
                backends.append(local)
                b = local
            options: dict[str, Any] = {"api_tokens": [ADMIN_TOKEN], **overrides}
            settings = GatewaySettings(
                port=port, replica_url=url, peers=urls if n > 1 else [], internal_token=TOKEN, **options
            )
            server = GatewayServer(settings, b, functions, pool_pods=pool_pods)
            await server.start("127.0.0.1", port)
            replica = Replica(url, server.gateway, server, b)
            started.append(replica)
            out.append(replica)
        return out

    yield start
    for replica in started:
        await replica.stop()
    for local in backends:
        await local.stop_all()


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """An in-process upstream: echoes method, path, headers and body size."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {"method": request.method, "path": request.path_qs, "size": len(body), "headers": dict(request.headers)}
        )

    async with serving(handler, client_max_size=1024**3) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
