"""How the relay classifies upstream failures: only a failure before anything was sent may be retried.

Real sockets on loopback: a port nobody listens on (refused), a listener that never answers (no
response in time), a listener that closes a pooled connection as it is reused (sent again once,
for an idempotent method only).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from gwhelpers import FakeBackend, function

from ports import free_port
from voltgrid.gateway.upstream import UpstreamError, UpstreamPool


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """A listener that accepts connections and reads requests but never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_refused_connect_sent_nothing() -> None:
    pool = UpstreamPool()
    with pytest.raises(UpstreamError) as caught:
        await pool.connect("127.0.0.1", free_port())
    assert caught.value.sent_nothing and not caught.value.timeout
    pool.close()


async def test_a_connect_that_times_out_sent_nothing() -> None:
    # A listener with a full accept queue stands in for a gone pod's IP that answers nothing.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(listener.getsockname())
            fillers.append(s)
        pool = UpstreamPool()
        with pytest.raises(UpstreamError) as caught:
            await pool.connect("127.0.0.1", listener.getsockname()[1], 0.3)
        assert caught.value.sent_nothing and caught.value.timeout
        pool.close()
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_an_instance_that_never_answers_is_a_504(replicas, silent: str) -> None:
    (gw,) = await replicas([function("echo")], backend=FakeBackend(silent), upstream_timeout=0.5)
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/fn/default/echo/x") as r:
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "upstream_timeout"


async def test_an_unreachable_instance_is_a_502_after_one_more_placement(replicas) -> None:
    backend = FakeBackend(f"http://127.0.0.1:{free_port()}")
    (gw,) = await replicas([function("echo")], backend=backend)
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/fn/default/echo/x") as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "upstream_unavailable"
    assert len(backend.created) == 2  # placed again once: nothing had been sent


async def test_a_pooled_connection_closed_by_the_instance_is_retried_for_get_only(replicas) -> None:
    requests: list[bytes] = []

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers one request with keep-alive, then closes the connection when the next arrives."""
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head.split(b" ", 1)[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        nxt = await reader.read(65536)
        if nxt:
            requests.append(nxt.split(b" ", 1)[0])
        writer.close()

    server = await asyncio.start_server(once_then_close, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        (gw,) = await replicas([function("echo")], backend=FakeBackend(url))
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.get(f"{gw.url}/fn/default/echo/x") as r:
                    assert r.status == 200  # the second on a fresh connection after the reused one failed
            async with http.post(f"{gw.url}/fn/default/echo/x", data=b"x") as r:
                assert r.status == 502  # on the pooled connection, which closes: not idempotent, not sent twice
        assert requests == [b"GET", b"GET", b"GET", b"POST"]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_reused_connection_times_out_its_own_exchange() -> None:
    """The head timer is armed once per connection and re-armed lazily: a second exchange on the
    pooled connection still times out its own ``timeout`` after it was sent, not the first's."""
    held: list[asyncio.StreamWriter] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read(65536)  # the second request: never answered

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    loop = asyncio.get_running_loop()
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        first = await pool.connect("127.0.0.1", port)
        response = await first.send("GET", request, final=True, timeout=0.4)
        assert response.status == 200 and response.body == b"ok"
        await asyncio.sleep(0.2)  # the first exchange's deadline is now 0.2 s away
        second = await pool.connect("127.0.0.1", port)
        assert second is first and second.reused
        sent = loop.time()
        with pytest.raises(UpstreamError) as caught:
            await second.send("GET", request, final=True, timeout=0.4)
        waited = loop.time() - sent
        assert caught.value.timeout and 0.39 <= waited < 0.7, waited
    finally:
        pool.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
