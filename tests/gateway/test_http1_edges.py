"""Edges of HTTP/1.1 framing on the gateway's data path, with raw sockets on both sides: an answer
before the body ends, requests pipelined behind it, trailers, answers whose end is the connection's,
``Expect: 100-continue``, and an upstream that switches protocols unasked."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from gwhelpers import FakeBackend, function
from hostile import MAX_BODY, HostileGateway, request_bytes, threaded_gateway

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def gateway() -> Iterator[HostileGateway]:
    with threaded_gateway() as gw:
        yield gw


def exchange(port: int, data: bytes, *, keep_sending: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send ``data`` (then ``keep_sending``, ignoring a closed socket), read until the gateway closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if keep_sending:
            with contextlib.suppress(OSError):  # the gateway may have answered and closed already
                s.sendall(keep_sending)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def test_an_early_413_reaches_a_client_still_sending_its_body(gateway: HostileGateway) -> None:
    head = b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY * 8)
    answer = exchange(gateway.port, head + b"x" * 65536, keep_sending=b"y" * (512 * 1024))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()


def test_a_request_pipelined_behind_a_closing_answer_is_never_run(gateway: HostileGateway) -> None:
    refused = b"POST /fn/default/open/refused HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\nabc" % (MAX_BODY * 8)
    behind = b"GET /fn/default/open/behind HTTP/1.1\r\nHost: gw\r\n\r\n"
    answer = exchange(gateway.port, refused + behind)
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 413")
    assert "/behind" not in gateway.upstream_hits


def test_a_content_length_with_spaces_frames_the_body(gateway: HostileGateway) -> None:
    data = b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 3 \r\n\r\nabc"
    answer = exchange(gateway.port, data)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_expect_100_continue_is_answered_before_the_body(gateway: HostileGateway) -> None:
    head = b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 5\r\n"
    head += b"Expect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(head)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 100 Continue"), first
        s.sendall(b"hello")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert (first + rest).split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/1.1 200")


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the gateway closed or aborted the connection: what some tests cause
            finally:
                writer.close()

        server = await asyncio.start_server(closing, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def get(url: str, path: str = "/fn/default/echo/x") -> bytes:
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    writer.write(request_bytes("GET", path, []))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_an_answers_trailers_never_reach_the_next_answer(replicas, raw_upstream) -> None:
    async def chunked_with_trailer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while await reader.readuntil(b"\r\n\r\n"):
            n += 1
            if n == 1:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nSet-Cookie: sid=A\r\n\r\n"
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    (gw,) = await replicas([function("echo")], backend=FakeBackend(await raw_upstream(chunked_with_trailer)))
    first, second = await get(gw.url), await get(gw.url)
    assert first.endswith(b"abc\r\n0\r\n\r\n") and b"sid=A" not in first + second
    assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"ok")


async def test_an_answer_ended_by_the_upstream_closing_arrives_whole(replicas, raw_upstream) -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 300_000)
        await writer.drain()

    (gw,) = await replicas([function("echo")], backend=FakeBackend(await raw_upstream(close_delimited)))
    answer = await get(gw.url)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    assert body.endswith(b"0\r\n\r\n") and body.count(b"z") == 300_000


async def test_an_upstream_switching_protocols_unasked_is_a_502(replicas, raw_upstream) -> None:
    async def switches(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
        await writer.drain()
        await reader.read()

    (gw,) = await replicas([function("echo")], backend=FakeBackend(await raw_upstream(switches)))
    assert (await get(gw.url)).startswith(b"HTTP/1.1 502")
