"""HTTP/2 server protocol, upstream pool and gRPC relay, against a real grpcio server and clients on loopback.

The upstream is a grpcio (asyncio) server with generic handlers and bytes in, bytes out (no codegen);
the gateway side is ``H2ServerProtocol`` + ``relay_grpc``; the callers are grpcio's channel, httpx
(HTTP/2 with prior knowledge), the module's own ``H2Upstream`` (to send what grpcio will not, such
as a bare ``grpc-timeout``) and a raw socket (hostile input).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import h2.config
import h2.connection
import httpx
import pytest
import uvloop
from grpc import aio as grpc_aio
from h2.errors import ErrorCodes

from ports import free_port
from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.h2relay import (
    GrpcStatus,
    H2Limits,
    H2ServerProtocol,
    H2Stream,
    H2Upstream,
    H2UpstreamUnreachable,
    grpc_code_for,
    grpc_error,
    is_grpc,
    parse_grpc_timeout,
    relay_grpc,
)

BIG = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", BIG),
    ("grpc.max_send_message_length", BIG),
]
Context = grpc_aio.ServicerContext[bytes, bytes]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(autouse=True)
async def no_leaks(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Each test leaves no task behind and logs no traceback (set up first: checks after the other teardowns)."""
    yield
    await asyncio.sleep(0.05)  # transports closed in teardown report connection_lost on the next turns
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not [t.get_name() for t in leftover if t.get_name().startswith("h2-")]
    assert not [r.getMessage() for r in caplog.records if r.exc_info]


@dataclass
class Upstream:
    """The grpcio server the relay forwards to, and what its handlers saw."""

    port: int
    sleep_started: asyncio.Event = field(default_factory=asyncio.Event)
    sleep_cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def _service(state: Upstream) -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: Context) -> bytes:
        await context.send_initial_metadata((("x-upstream", "yes"),))
        context.set_trailing_metadata((("x-trailer", "t"),))
        return b"echo:" + request

    async def server_stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield f"item-{i}".encode()

    async def client_stream(requests: AsyncIterator[bytes], context: Context) -> bytes:
        return b"|".join([r async for r in requests])

    async def bidi(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r.upper()

    async def sleep(request: bytes, context: Context) -> bytes:
        state.sleep_started.set()
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            state.sleep_cancelled.set()
            raise
        return b"slept"

    async def fail(request: bytes, context: Context) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope: ünïcode")

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


@contextlib.asynccontextmanager
async def serving_upstream() -> AsyncIterator[Upstream]:
    # A low stream limit, so that the pool's waiting for a free slot is exercised.
    server = grpc_aio.server(options=[*CHANNEL_OPTIONS, ("grpc.max_concurrent_streams", 8)])
    port = server.add_insecure_port("127.0.0.1:0")
    state = Upstream(port)
    server.add_generic_rpc_handlers((_service(state),))
    await server.start()
    try:
        yield state
    finally:
        await server.stop(None)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serving_upstream() as state:
        yield state


@dataclass
class Relay:
    port: int
    protocols: list[H2ServerProtocol]
    pool: H2Upstream


StartRelay = Callable[..., Awaitable[Relay]]


async def _plain(stream: H2Stream) -> None:
    """A non-gRPC handler: echo the request's head and body."""
    body = b"".join([chunk async for chunk in stream.body()])
    head = f"{stream.method} {stream.path} {stream.authority} {stream.scheme} {stream.peer}".encode()
    await stream.send_headers(200, [("content-type", "text/plain"), ("x-echo", stream.header("x-test") or "")])
    await stream.send_data(head + b"\n")
    await stream.send_data(body, end_stream=True)


@contextlib.asynccontextmanager
async def serving_relay(upstream_port: int, **limits: Any) -> AsyncIterator[Relay]:
    """A gateway-like h2c server: gRPC relayed to ``upstream_port``, anything else echoed."""
    pool = H2Upstream(connect_timeout=2.0)

    async def handler(stream: H2Stream) -> None:
        if not is_grpc(stream):
            await _plain(stream)
        elif stream.path.startswith("/test.Missing/"):
            await grpc_error(stream, GrpcStatus.NOT_FOUND, "no function serves test.Missing")
        else:
            await relay_grpc(stream, pool, "127.0.0.1", upstream_port, stream.path, extra_headers=[("x-via", "gw")])

    relay = Relay(0, [], pool)

    def factory() -> H2ServerProtocol:
        protocol = H2ServerProtocol(handler, H2Limits(**limits))
        relay.protocols.append(protocol)
        return protocol

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        for protocol in relay.protocols:
            await protocol.close(1.0)
        await pool.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def start_relay(upstream: Upstream) -> AsyncIterator[StartRelay]:
    """``await start_relay(upstream_port=None, **limits)``: a relay to ``upstream`` (or another port)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(upstream_port: int | None = None, **limits: Any) -> Relay:
            return await stack.enter_async_context(serving_relay(upstream_port or upstream.port, **limits))

        yield start


@pytest.fixture
async def relay(start_relay: StartRelay) -> Relay:
    return await start_relay()


@contextlib.asynccontextmanager
async def channel(port: int) -> AsyncIterator[grpc_aio.Channel]:
    async with grpc_aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
        yield ch


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


async def test_all_four_kinds_through_the_relay(relay: Relay) -> None:
    async with channel(relay.port) as ch:
        call = ch.unary_unary("/test.Echo/Unary")(b"hi")
        assert await call == b"echo:hi"
        assert ("x-upstream", "yes") in list(await call.initial_metadata())
        assert ("x-trailer", "t") in list(await call.trailing_metadata())

        items = [m async for m in ch.unary_stream("/test.Echo/ServerStream")(b"5")]
        assert items == [f"item-{i}".encode() for i in range(5)]

        async def parts() -> AsyncIterator[bytes]:
            for p in (b"a", b"b", b"c"):
                yield p

        assert await ch.stream_unary("/test.Echo/ClientStream")(parts()) == b"a|b|c"

        # Bidi, in lock step: each answer must come back before the next request is sent.
        bidi = ch.stream_stream("/test.Echo/Bidi")()
        for word in (b"one", b"two", b"three"):
            await bidi.write(word)
            assert await bidi.read() == word.upper()
        await bidi.done_writing()
        assert await bidi.read() is grpc_aio.EOF
        assert await bidi.code() == grpc.StatusCode.OK


async def test_upstream_status_and_message_pass_back(relay: Relay) -> None:
    async with channel(relay.port) as ch:
        with pytest.raises(grpc_aio.AioRpcError) as failed:
            await ch.unary_unary("/test.Echo/Fail")(b"")
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == "nope: ünïcode"


async def test_gateway_errors_are_trailers_only(relay: Relay) -> None:
    async with channel(relay.port) as ch:
        with pytest.raises(grpc_aio.AioRpcError) as failed:
            await ch.unary_unary("/test.Missing/Call")(b"")
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no function serves test.Missing"


async def test_many_concurrent_calls_share_one_upstream_connection(relay: Relay) -> None:
    async with channel(relay.port) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        answers = await asyncio.gather(*(unary(str(i).encode()) for i in range(100)))
    assert answers == [f"echo:{i}".encode() for i in range(100)]
    assert len(relay.pool._connections) == 1


async def test_large_messages_flow_both_ways(relay: Relay) -> None:
    message = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    async with channel(relay.port) as ch:
        assert await ch.unary_unary("/test.Echo/Unary")(message) == b"echo:" + message
        bidi = ch.stream_stream("/test.Echo/Bidi")()
        await bidi.write(b"x" * (8 * 1024 * 1024))
        assert await bidi.read() == b"X" * (8 * 1024 * 1024)
        await bidi.done_writing()


async def test_client_deadline_cancels_upstream(relay: Relay, upstream: Upstream) -> None:
    async with channel(relay.port) as ch:
        with pytest.raises(grpc_aio.AioRpcError) as failed:
            await ch.unary_unary("/test.Echo/Sleep")(b"10", timeout=0.5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(upstream.sleep_cancelled.wait(), 5)


async def test_gateway_enforces_grpc_timeout(relay: Relay, upstream: Upstream) -> None:
    """A client that sends grpc-timeout but does not enforce it still gets DEADLINE_EXCEEDED, from the gateway."""
    client = H2Upstream()
    try:
        headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "300m")]

        async def body() -> AsyncIterator[bytes]:
            yield _grpc_frame(b"10")

        response = await client.request(
            "127.0.0.1", relay.port, "POST", "/test.Echo/Sleep", headers=headers, body=body()
        )
        async with response:
            assert response.status == 200
            assert [chunk async for chunk in response] == []
            status = dict(response.headers) | dict(response.trailers)
        assert status["grpc-status"] == str(GrpcStatus.DEADLINE_EXCEEDED)
        assert "deadline exceeded" in status["grpc-message"]
        await asyncio.wait_for(upstream.sleep_cancelled.wait(), 5)
    finally:
        await client.close()


async def test_client_cancellation_reaches_upstream(relay: Relay, upstream: Upstream) -> None:
    async with channel(relay.port) as ch:
        call = ch.unary_unary("/test.Echo/Sleep")(b"10")
        await asyncio.wait_for(upstream.sleep_started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.wait_for(upstream.sleep_cancelled.wait(), 5)


async def test_client_disconnect_cancels_every_call_upstream(relay: Relay, upstream: Upstream) -> None:
    ch = grpc_aio.insecure_channel(f"127.0.0.1:{relay.port}", options=CHANNEL_OPTIONS)
    calls = [ch.unary_unary("/test.Echo/Sleep")(b"10") for _ in range(3)]
    await asyncio.wait_for(upstream.sleep_started.wait(), 5)
    await ch.close()  # the TCP connection goes: every handler task is cancelled, every upstream stream reset
    for call in calls:
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.wait_for(upstream.sleep_cancelled.wait(), 5)
    await asyncio.sleep(0.1)
    assert not relay.protocols[0]._streams


async def test_a_reset_stream_cancels_its_handler() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(stream: H2Stream) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert stream.reset_by_peer
            cancelled.set()
            raise

    protocols: list[H2ServerProtocol] = []

    def factory() -> H2ServerProtocol:
        protocols.append(H2ServerProtocol(handler))
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    client = H2Upstream()
    try:
        request = asyncio.create_task(client.request("127.0.0.1", server.sockets[0].getsockname()[1], "GET", "/"))
        await asyncio.wait_for(started.wait(), 5)
        request.cancel()  # RST_STREAM(CANCEL) to the server
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.wait_for(cancelled.wait(), 5)
    finally:
        await client.close()
        for protocol in protocols:
            await protocol.close(1.0)
        server.close()
        await server.wait_closed()


async def test_a_failing_handler_answers_500_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(stream: H2Stream) -> None:
        raise RuntimeError("bug")

    protocols: list[H2ServerProtocol] = []

    def factory() -> H2ServerProtocol:
        protocols.append(H2ServerProtocol(handler))
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            response = await client.get(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert len([r for r in caplog.records if r.exc_info]) == 1
        caplog.clear()  # the one traceback was expected
    finally:
        for protocol in protocols:
            await protocol.close(1.0)
        server.close()
        await server.wait_closed()


async def test_upstream_down_is_unavailable(start_relay: StartRelay) -> None:
    relay = await start_relay(upstream_port=free_port())
    async with channel(relay.port) as ch:
        with pytest.raises(grpc_aio.AioRpcError) as failed:
            await ch.unary_unary("/test.Echo/Unary")(b"hi")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot connect" in (failed.value.details() or "")


async def test_connect_failure_is_distinct_from_failure_after_sending() -> None:
    pool = H2Upstream(connect_timeout=1.0)
    try:
        with pytest.raises(H2UpstreamUnreachable):
            await pool.request("127.0.0.1", free_port(), "GET", "/")
    finally:
        await pool.close()


async def test_body_over_the_limit_is_resource_exhausted(start_relay: StartRelay) -> None:
    relay = await start_relay(max_body_bytes=256 * 1024)

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"z" * (64 * 1024)

    async with channel(relay.port) as ch:
        with pytest.raises(grpc_aio.AioRpcError) as failed:
            await ch.stream_unary("/test.Echo/ClientStream")(parts())
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unread_body_backpressures_the_client() -> None:
    """A handler that does not read holds the client to one stream window, not the whole body."""
    seen: list[H2Stream] = []
    proceed = asyncio.Event()

    async def handler(stream: H2Stream) -> None:
        seen.append(stream)
        await proceed.wait()
        total = sum([len(chunk) async for chunk in stream.body()])
        await stream.send_headers(200, [])
        await stream.send_data(str(total).encode(), end_stream=True)

    window = 128 * 1024
    protocols: list[H2ServerProtocol] = []

    def factory() -> H2ServerProtocol:
        protocols.append(H2ServerProtocol(handler, H2Limits(stream_window=window)))
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H2Upstream()
    try:

        async def body() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"b" * (16 * 1024)

        request = asyncio.create_task(client.request("127.0.0.1", port, "POST", "/upload", body=body()))
        await asyncio.sleep(0.5)
        assert seen
        buffered = sum(len(data) for data, _ in seen[0]._chunks)
        assert buffered <= window
        proceed.set()
        response = await request
        async with response:
            assert b"".join([c async for c in response]) == str(64 * 16 * 1024).encode()
    finally:
        await client.close()
        for protocol in protocols:
            await protocol.close(1.0)
        server.close()
        await server.wait_closed()


async def test_plain_http2_with_httpx(relay: Relay) -> None:
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        response = await client.post(
            f"http://127.0.0.1:{relay.port}/some/path?q=1&r=%20", content=b"payload", headers={"x-test": "yes"}
        )
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.headers["x-echo"] == "yes"
    head, body = response.content.split(b"\n", 1)
    assert head == f"POST /some/path?q=1&r=%20 127.0.0.1:{relay.port} http 127.0.0.1".encode()
    assert body == b"payload"


async def test_graceful_close_finishes_streams_in_flight(relay: Relay, upstream: Upstream) -> None:
    async with channel(relay.port) as ch:
        call = ch.unary_unary("/test.Echo/Sleep")(b"0.5")
        await asyncio.wait_for(upstream.sleep_started.wait(), 5)
        (protocol,) = relay.protocols
        closing = asyncio.create_task(protocol.close(5.0))
        assert await call == b"slept"
        await asyncio.wait_for(closing, 5)
    assert not upstream.sleep_cancelled.is_set()


async def test_take_over_an_already_started_connection() -> None:
    """An HTTP/1.1 protocol that read the preface hands the transport and the bytes it read over."""

    class Sniffer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            assert data.startswith(PREFACE[:3])
            taken.append(H2ServerProtocol.take_over(self.transport, _plain, data))

    taken: list[H2ServerProtocol] = []
    server = await asyncio.get_running_loop().create_server(Sniffer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            response = await client.get(f"http://127.0.0.1:{port}/x")
        assert response.status_code == 200
        assert response.content.startswith(b"GET /x ")
    finally:
        for protocol in taken:
            await protocol.close(1.0)
        server.close()
        await server.wait_closed()


async def test_concurrent_stream_limit_queues_the_client() -> None:
    """The server advertises its stream limit; the pool waits for a free slot instead of being refused."""
    active = 0
    most = 0

    async def handler(stream: H2Stream) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await asyncio.sleep(0.05)
            await stream.send_headers(200, [], end_stream=True)
        finally:
            active -= 1

    protocols: list[H2ServerProtocol] = []

    def factory() -> H2ServerProtocol:
        protocols.append(H2ServerProtocol(handler, H2Limits(max_concurrent_streams=3)))
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H2Upstream()

    async def get() -> int:
        async with await client.request("127.0.0.1", port, "GET", "/") as response:
            return response.status

    try:
        assert await asyncio.gather(*(get() for _ in range(12))) == [200] * 12
        assert most == 3
        assert len(protocols) == 1
    finally:
        await client.close()
        for protocol in protocols:
            await protocol.close(1.0)
        server.close()
        await server.wait_closed()


async def test_header_list_over_the_limit_closes_the_connection(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "voltgrid.gateway.h2relay")
    relay = await start_relay(max_header_list_size=4096)
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        assert (await client.get(f"http://127.0.0.1:{relay.port}/", headers={"x-small": "1"})).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{relay.port}/", headers={"x-big": "v" * 8192})
    assert any("closed" in r.getMessage() for r in caplog.records)


async def test_upstream_graceful_shutdown_lets_calls_in_flight_finish(start_relay: StartRelay) -> None:
    """grpcio's stop(grace) says GOAWAY and finishes its calls: the relay must not fail them (h2#1181)."""
    state = Upstream(0)
    server = grpc_aio.server(options=CHANNEL_OPTIONS)
    state.port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers((_service(state),))
    await server.start()
    try:
        relay = await start_relay(upstream_port=state.port)
        async with channel(relay.port) as ch:
            call = ch.unary_unary("/test.Echo/Sleep")(b"0.5")
            await asyncio.wait_for(state.sleep_started.wait(), 5)
            stopping = asyncio.create_task(server.stop(5))
            assert await call == b"slept"
            await stopping
    finally:
        await server.stop(None)


async def test_declared_body_over_the_limit_is_413(start_relay: StartRelay) -> None:
    relay = await start_relay(max_body_bytes=1000)
    client = H2Upstream()

    async def body() -> AsyncIterator[bytes]:
        yield b"b" * 5000

    try:
        headers = [("content-length", "5000")]
        async with await client.request(
            "127.0.0.1", relay.port, "POST", "/up", headers=headers, body=body()
        ) as response:
            assert response.status == 413
            assert b"body_too_large" in b"".join([c async for c in response])
    finally:
        await client.close()


async def test_pool_reconnects_after_the_upstream_connection_closed(relay: Relay) -> None:
    async with channel(relay.port) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        assert await unary(b"1") == b"echo:1"
        (first,) = relay.pool._connections.values()
        first.close()
        await asyncio.sleep(0.05)
        assert await unary(b"2") == b"echo:2"
        (second,) = relay.pool._connections.values()
        assert second is not first


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of the HTTP/2 frames in ``data``."""
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE GARBAGE GARBAGE GARBAGE",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # WINDOW_UPDATE of 0 on the connection
        b"\x00\x00\x00\x01\x05\x00\x00\x00\x02",  # HEADERS on an even (server) stream id
    ],
)
async def test_garbage_after_preface_is_goaway(relay: Relay, caplog: pytest.LogCaptureFixture, garbage: bytes) -> None:
    caplog.set_level(logging.DEBUG, "voltgrid.gateway.h2relay")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + garbage)  # preface, empty SETTINGS, garbage
    received = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    writer.close()
    await writer.wait_closed()
    goaways = [payload for kind, payload in _frames(received) if kind == 0x7]
    assert goaways
    assert int.from_bytes(goaways[-1][4:8], "big") != 0  # an error code, not NO_ERROR
    assert not [r for r in caplog.records if r.exc_info]
    assert len([r for r in caplog.records if "closed" in r.getMessage()]) == 1


async def test_rapid_reset_is_goaway_enhance_your_calm(start_relay: StartRelay) -> None:
    """HEADERS then RST_STREAM, over and over (CVE-2023-44487): the connection ends with ENHANCE_YOUR_CALM."""
    relay = await start_relay(max_resets_per_second=50)
    attacker = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    attacker.initiate_connection()
    for stream_id in range(1, 2 * 100, 2):
        attacker.send_headers(stream_id, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")])
        attacker.reset_stream(stream_id)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(attacker.data_to_send())
    received = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    goaways = [payload for kind, payload in _frames(received) if kind == 0x7]
    assert int.from_bytes(goaways[-1][4:8], "big") == ErrorCodes.ENHANCE_YOUR_CALM


async def test_wrong_preface_is_closed_quietly(relay: Relay, caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert not [r for r in caplog.records if r.exc_info]


async def test_idle_connection_is_closed(start_relay: StartRelay) -> None:
    relay = await start_relay(idle_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    received = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert [kind for kind, _ in _frames(received)][-1] == 0x7


def test_the_relay_on_uvloop() -> None:
    """The gateway runs on uvloop, whose transports are not asyncio's classes: the main paths there too."""

    async def scenario() -> None:
        async with serving_upstream() as upstream, serving_relay(upstream.port) as relay, channel(relay.port) as ch:
            assert await ch.unary_unary("/test.Echo/Unary")(b"hi") == b"echo:hi"
            bidi = ch.stream_stream("/test.Echo/Bidi")()
            for word in (b"one", b"two"):
                await bidi.write(word)
                assert await bidi.read() == word.upper()
            await bidi.done_writing()
            big = b"x" * (8 * 1024 * 1024)
            assert await ch.unary_unary("/test.Echo/Unary")(big) == b"echo:" + big
            call = ch.unary_unary("/test.Echo/Sleep")(b"10")
            await asyncio.wait_for(upstream.sleep_started.wait(), 5)
            call.cancel()
            await asyncio.wait_for(upstream.sleep_cancelled.wait(), 5)

    uvloop.run(scenario())


def test_gateway_errors_map_to_grpc_status() -> None:
    def code(status: int, name: str = "x") -> int:
        return grpc_code_for(GatewayError(status, name, "m"))

    assert code(401) == GrpcStatus.UNAUTHENTICATED
    assert code(403) == GrpcStatus.PERMISSION_DENIED
    assert code(404) == GrpcStatus.NOT_FOUND
    assert code(400) == GrpcStatus.INVALID_ARGUMENT
    assert code(429) == GrpcStatus.RESOURCE_EXHAUSTED
    assert code(503, "max_instances") == GrpcStatus.RESOURCE_EXHAUSTED
    assert code(503) == GrpcStatus.UNAVAILABLE
    assert code(502) == GrpcStatus.UNAVAILABLE
    assert code(504) == GrpcStatus.DEADLINE_EXCEEDED
    assert code(418) == GrpcStatus.UNKNOWN


def test_grpc_timeout_parsing() -> None:
    assert parse_grpc_timeout("100m") == pytest.approx(0.1)
    assert parse_grpc_timeout("2S") == 2.0
    assert parse_grpc_timeout("1H") == 3600.0
    assert parse_grpc_timeout(None) is None
    assert parse_grpc_timeout("12") is None
    assert parse_grpc_timeout("-1S") is None
    assert parse_grpc_timeout("1234567890S") is None
