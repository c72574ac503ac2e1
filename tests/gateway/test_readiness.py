"""A replica is ready once it can route: its Function catalog listed; its hop to an owner uses the
configured connect timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from gwhelpers import FakeBackend, function

from apifake import scripted_apiserver
from ports import free_port
from voltgrid.api import constants
from voltgrid.gateway.app import GatewayServer
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.gateway.upstream import UpstreamPool


async def status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as r:
        return r.status


async def test_not_ready_until_the_function_catalog_is_listed() -> None:
    async with scripted_apiserver(f"/apis/{constants.API_VERSION}/functions") as (apiserver, api):
        port = free_port()
        server = GatewayServer(GatewaySettings(port=port), FakeBackend("http://127.0.0.1:9"), [], functions_api=api)
        try:
            await server.start("127.0.0.1", port)
            base = f"http://127.0.0.1:{port}/_voltgrid"
            async with aiohttp.ClientSession() as http:
                await asyncio.sleep(0.3)  # the first LIST fails: no page scripted yet (500)
                assert await status(http, f"{base}/readyz") == 503
                assert await status(http, f"{base}/healthz") == 200  # alive all the same
                apiserver.pages += [{"items": [], "metadata": {"resourceVersion": "1"}}] * 3
                async with asyncio.timeout(10):
                    while await status(http, f"{base}/readyz") != 200:  # noqa: ASYNC110 (polling what is tested)
                        await asyncio.sleep(0.1)
        finally:
            await server.stop()


async def test_the_hop_to_the_owner_uses_forward_connect_timeout(
    replicas, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await replicas([function("echo")], n=2, backend=FakeBackend(upstream), forward_connect_timeout=0.7)
    seen: list[tuple[str, Any]] = []
    original = UpstreamPool.connect

    def spy(self: UpstreamPool, host: str, port: int | None, connect_timeout: float | None = None) -> Any:
        seen.append((f"http://{host}:{port}", connect_timeout))
        return original(self, host, port, connect_timeout)

    monkeypatch.setattr(UpstreamPool, "connect", spy)
    session = next(f"s-{i}" for i in range(100) if a.gateway.membership.owner(f"s-{i}") == b.url)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{a.url}/fn/default/echo/x", headers={"X-Voltgrid-Session": session}) as r,
    ):
        assert r.status == 200
    hops = [timeout for url, timeout in seen if url.startswith(b.url)]
    assert hops and hops[0] == 0.7
