"""The official MCP SDK through the gateway: Streamable HTTP across two replicas, and legacy SSE."""

from __future__ import annotations

import asyncio
import itertools

import httpx2
from gwhelpers import function
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

#: Seconds to wait for the gateway to release the instances after the SDK's DELETE.
RELEASE_DEADLINE = 10.0


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next gateway replica, as a load balancer in front of them would."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = itertools.cycle(ports)
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(port=next(self._ports))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _session_run(url: str, ports: list[int], tag: str, calls: int) -> list[str]:
    seen = []
    client = httpx2.AsyncClient(transport=RoundRobin(ports), timeout=httpx2.Timeout(30, read=300))
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        await session.call_tool("remember", {"key": "tag", "value": tag})
        for _ in range(calls):
            who = await session.call_tool("whoami", {})
            seen.append(who.structured_content["instance"])
            recalled = await session.call_tool("recall", {"key": "tag"})
            assert recalled.structured_content == {"result": tag}  # same MCP server session every time
    return seen


async def test_streamable_http_sessions_stick_across_two_replicas(replicas) -> None:
    a, b = await replicas([function("tools", "mcp_function.py", affinity="MCP")], n=2)
    ports = [int(gw.url.rsplit(":", 1)[1]) for gw in (a, b)]
    url = f"{a.url}/fn/default/tools/mcp"
    runs = await asyncio.gather(*(_session_run(url, ports[i % 2 :] + ports[: i % 2], f"tag{i}", 3) for i in range(4)))
    instances = [set(seen) for seen in runs]
    assert all(len(s) == 1 for s in instances)  # each session: one instance, every time
    assert len(set.union(*instances)) == 4  # and its own instance
    forwarded = sum(gw.gateway.metrics.forwarded.labels("ok")._value.get() for gw in (a, b))
    assert forwarded > 0  # every session's requests alternate replicas: the non-owner's took one hop
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RELEASE_DEADLINE
    while await a.backend.list(function="default/tools") and loop.time() < deadline:  # noqa: ASYNC110 (no event to wait on)
        await asyncio.sleep(0.05)
    assert await a.backend.list(function="default/tools") == []  # DELETE ended each session


async def test_legacy_sse_transport_learns_the_session_from_the_endpoint_event(replicas) -> None:
    (gw,) = await replicas([function("legacy", "mcp_function.py", env={"MCP_TRANSPORT": "sse"}, affinity="MCP")])
    seen = set()
    async with sse_client(f"{gw.url}/fn/default/legacy/sse") as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for _ in range(3):
            seen.add((await session.call_tool("whoami", {})).structured_content["instance"])
        keys = [r.key for shard in gw.gateway.manager.registry.shards() for r in shard.values()]
    assert len(seen) == 1
    assert len(keys) == 1 and len(keys[0]) == 32  # bound by the server's session id (uuid hex)
