"""Slow, stalled, oversized and vanishing clients: 408/413 or a clean close, never a 5xx or a hang.

Raw sockets against a gateway in a thread (:mod:`hostile`) with short header-read and body-idle
timeouts; log assertions run against a gateway in the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import time
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from gwhelpers import FakeBackend, function, serving
from hostile import MAX_BODY, HostileGateway, raw, read_status, threaded_gateway

from voltgrid.gateway.http1 import LOG_BURST

HEADER_TIMEOUT = 1.0
BODY_IDLE = 0.5
MAX_PENDING = 8


@pytest.fixture(scope="module")
def gateway() -> Iterator[HostileGateway]:
    with threaded_gateway(
        header_read_timeout=HEADER_TIMEOUT, body_idle_timeout=BODY_IDLE, max_pending_connections=MAX_PENDING
    ) as gw:
        yield gw


def connect(gw: HostileGateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def test_chunked_body_over_the_limit_is_413(gateway: HostileGateway) -> None:
    with connect(gateway) as s:
        s.sendall(b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"b" * 65536
        for _ in range(MAX_BODY // len(chunk) + 4):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
        response = s.recv(65536)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"127.0.0.1" not in response  # nothing about the instance's address


@pytest.mark.parametrize("length", [1000, 200_000], ids=["read-whole", "streamed"])
def test_a_body_that_stalls_is_408_within_the_idle_timeout(gateway: HostileGateway, length: int) -> None:
    with connect(gateway) as s:
        s.sendall(b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % length)
        s.sendall(b"x" * min(length // 2, 100_000))
        started = time.monotonic()
        status = read_status(s, timeout=BODY_IDLE + 3)
    assert status == 408
    assert time.monotonic() - started < BODY_IDLE + 1.5


def test_content_length_1000_then_10_bytes_then_silence(gateway: HostileGateway) -> None:
    with connect(gateway) as s:
        s.sendall(b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n0123456789")
        assert read_status(s, timeout=BODY_IDLE + 3) == 408
        s.settimeout(BODY_IDLE + 3)
        while s.recv(65536):
            pass  # then closed by the gateway: recv ends with b"" instead of hanging


def test_slowloris_headers_are_answered_408_and_closed(gateway: HostileGateway) -> None:
    with connect(gateway) as s:
        s.sendall(b"GET /fn/default/open/x HTTP/1.1\r\nHost: gw\r\n")
        started = time.monotonic()
        try:
            for i in range(40):  # one header line every 0.1 s: never a complete head
                s.sendall(b"X-Slow-%d: drip\r\n" % i)
                time.sleep(0.1)
        except OSError:
            pass  # closed while dripping
        status = read_status(s, timeout=HEADER_TIMEOUT + 3)
    assert status in (408, None)
    assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_a_connection_that_sends_nothing_is_closed_but_an_idle_keep_alive_one_is_not(gateway: HostileGateway) -> None:
    with connect(gateway) as s:
        started = time.monotonic()
        assert read_status(s, timeout=HEADER_TIMEOUT + 3) == 408
    assert time.monotonic() - started < HEADER_TIMEOUT + 1.0
    request = b"GET /_voltgrid/healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
    with connect(gateway) as s:
        s.sendall(request)
        assert read_status(s, timeout=3) == 200
        time.sleep(HEADER_TIMEOUT + 0.3)  # idle between requests: aiohttp's keep-alive timeout applies
        s.sendall(request)
        assert read_status(s, timeout=3) == 200


def test_pending_connections_are_capped(gateway: HostileGateway) -> None:
    idle = [connect(gateway) for _ in range(MAX_PENDING)]
    try:
        time.sleep(0.1)
        with connect(gateway) as extra:
            extra.settimeout(0.5)
            assert extra.recv(100) == b""  # closed as it opened
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert raw(gateway.port, b"GET /_voltgrid/healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n") == 200


async def test_a_client_leaving_mid_body_is_one_line(replicas, caplog: pytest.LogCaptureFixture) -> None:
    async def upstream(request: web.Request) -> web.Response:
        with contextlib.suppress(ConnectionError):  # the gateway gives up on the body as its client left
            await request.read()
        return web.json_response({})

    async with serving(upstream) as url:
        (gw,) = await replicas([function("open")], backend=FakeBackend(url))
        port = int(gw.url.rsplit(":", 1)[1])
        caplog.set_level(logging.INFO)
        for length in (1000, 200_000):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\nabc" % length)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()
            await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if "this is a bug" in r.getMessage()]


async def test_parser_rejections_are_single_lines_rate_limited(replicas, caplog: pytest.LogCaptureFixture) -> None:
    (gw,) = await replicas([function("open")], backend=FakeBackend("http://127.0.0.1:9"))
    port = int(gw.url.rsplit(":", 1)[1])
    caplog.set_level(logging.DEBUG, logger="voltgrid")
    caplog.set_level(logging.INFO, logger="aiohttp")
    for _ in range(3 * LOG_BURST):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n")
        await reader.read()
        writer.close()
    assert not [r for r in caplog.records if r.exc_info]
    rejections = [r for r in caplog.records if "refused a request" in r.getMessage()]
    assert 1 <= len(rejections) <= LOG_BURST


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    mask = b"\x01\x02\x03\x04"
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    return head[0] & 0x0F, await reader.readexactly(size)


async def test_an_unmasked_client_frame_closes_the_websocket_with_1002(replicas) -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    async with serving(echo) as url:
        (gw,) = await replicas([function("open")], backend=FakeBackend(url))
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
        try:
            writer.write(
                b"GET /fn/default/open/ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            long_text = b"y" * 300  # a 16-bit extended length, its frame split across two writes
            frame = masked_frame(long_text)
            for part in (masked_frame(b"hi"), frame[:3], frame[3:]):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            assert await read_frame(reader) == (0x1, b"hi")
            assert await read_frame(reader) == (0x1, long_text)
            writer.write(b"\x81\x05hello")  # no mask bit
            assert await asyncio.wait_for(read_frame(reader), 3) == (0x8, (1002).to_bytes(2, "big"))
            assert await asyncio.wait_for(reader.read(), 3) == b""  # then closed
        finally:
            writer.transport.abort()


async def test_a_body_held_back_by_a_slow_instance_is_not_idle_but_a_silent_client_is(replicas) -> None:
    async def slow(request: web.Request) -> web.Response:
        size = 0
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            await asyncio.sleep(0.1)  # the instance reads slowly: the gateway stops reading its client
        return web.json_response({"size": size})

    async with serving(slow) as url:
        (gw,) = await replicas([function("open")], backend=FakeBackend(url), body_idle_timeout=0.3)
        body = b"z" * (3 * 1024 * 1024)
        target = f"{gw.url}/fn/default/open/x"
        async with aiohttp.ClientSession() as http, http.post(target, data=io.BytesIO(body)) as r:
            assert (r.status, await r.json()) == (200, {"size": len(body)})
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
        writer.write(b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 300000\r\n\r\n" + b"z" * 1000)
        assert (await asyncio.wait_for(reader.readline(), 3)).startswith(b"HTTP/1.1 408")
        writer.close()
