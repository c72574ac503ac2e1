"""Header/Cookie affinity, streaming, WebSocket and large bodies through real instances."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import websockets
from gwhelpers import function

HDR = "X-Voltgrid-Session"


async def test_header_affinity_mints_returns_and_sticks(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([function("echo")])
    async with http.get(f"{gw.url}/fn/default/echo/whoami") as r:
        assert r.status == 200
        sid = r.headers[HDR]
        first = (await r.json())["instance"]
    for _ in range(3):
        async with http.get(f"{gw.url}/fn/default/echo/whoami", headers={HDR: sid}) as r:
            body = await r.json()
            assert (body["instance"], body["session"]) == (first, sid)
            assert HDR not in r.headers  # only a minted id is returned
    async with http.get(f"{gw.url}/fn/default/echo/whoami") as r:
        assert r.headers[HDR] != sid
        assert (await r.json())["instance"] != first  # sessionsPerInstance 1: its own instance


async def test_cookie_affinity(replicas) -> None:
    (gw,) = await replicas([function("echo", affinity="Cookie", cookie="vg")])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:  # keeps cookies
        async with client.get(f"{gw.url}/fn/default/echo/whoami") as r:
            assert "vg=" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
            first = await r.json()
        async with client.get(f"{gw.url}/fn/default/echo/whoami") as r:
            assert "Set-Cookie" not in r.headers
            assert (await r.json())["instance"] == first["instance"]


async def test_sse_first_event_arrives_before_upstream_finishes(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([function("echo")])
    async with http.get(f"{gw.url}/fn/default/echo/whoami") as r:
        sid = r.headers[HDR]
    started = time.monotonic()
    async with http.get(f"{gw.url}/fn/default/echo/sse?n=5&delay=0.4", headers={HDR: sid}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = await r.content.readuntil(b"\n\n")
        first_at = time.monotonic() - started
        rest = await r.read()
        total = time.monotonic() - started
    assert first == b"event: token\ndata: 0\n\n"
    assert first_at < 0.5  # the first token is not held back ...
    assert total > 1.6  # ... while the upstream takes about 2 s
    assert rest.endswith(b"event: done\ndata: end\n\n")
    record = gw.gateway.manager.registry.find("default/echo", sid)
    assert record is not None and record.inflight == 0 and record.requests == 2


async def test_websocket_echo_both_ways(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([function("echo")])
    async with http.get(f"{gw.url}/fn/default/echo/whoami") as r:
        sid = r.headers[HDR]
    ws_url = gw.url.replace("http://", "ws://") + "/fn/default/echo/ws"
    async with websockets.connect(ws_url, additional_headers={HDR: sid}) as ws:
        await ws.send("hello")
        assert await ws.recv() == "echo:hello"
        await ws.send(b"\x01\x02\x03")
        assert await ws.recv() == b"\x03\x02\x01"
        record = gw.gateway.manager.registry.find("default/echo", sid)
        assert record is not None and record.inflight == 1  # an open WebSocket is in flight
    await asyncio.sleep(0.1)
    assert record.inflight == 0


async def test_large_bodies_stream_both_ways(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([function("echo")])
    async with http.get(f"{gw.url}/fn/default/echo/whoami") as r:
        sid = r.headers[HDR]

    async def body():
        for _ in range(32):
            yield b"z" * (1024 * 1024)

    async with http.post(f"{gw.url}/fn/default/echo/count", data=body(), headers={HDR: sid}) as r:
        assert (await r.json())["received"] == 32 * 1024 * 1024
    async with http.get(f"{gw.url}/fn/default/echo/big?mib=48", headers={HDR: sid}) as r:
        size = 0
        async for chunk in r.content.iter_any():
            size += len(chunk)
    assert size == 48 * 1024 * 1024
    usage = gw.gateway.manager.registry.find("default/echo", sid)
    assert usage is not None and usage.bytes_in >= 32 * 1024 * 1024 and usage.bytes_out >= 48 * 1024 * 1024


async def test_none_affinity_balances_without_sessions(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([function("echo", affinity="None")])
    results = await asyncio.gather(*(http.get(f"{gw.url}/fn/default/echo/whoami") for _ in range(5)))
    for r in results:
        assert r.status == 200 and HDR not in r.headers
        r.release()
    assert len(gw.gateway.manager.registry) == 0
