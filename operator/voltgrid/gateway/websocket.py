"""WebSocket relay: the client's handshake checked, passed to the instance, then bytes spliced.

After the instance answers 101 the two connections are joined byte for byte (frames, pings and
close codes pass through untouched, and the instance's handshake answer reaches the client as it
is). Frames from the client are followed just enough to refuse one without a mask (RFC 6455 section
5.1): the client is sent close code 1002 and both sides are closed. The connection counts as one
request in flight for its whole life, bounded by the maximum stream duration, after which the
client is sent close code 1001 (going away). A side whose buffer is full pauses reading on the other
(the transports' own flow-control callbacks), so a client that stops reading holds the instance back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Coroutine
from typing import Any, Final

from voltgrid.gateway.errors import GatewayError, bad_request
from voltgrid.gateway.http1 import Request
from voltgrid.gateway.proxy import (
    OnChunk,
    OnResponse,
    OnSseEndpoint,
    Target,
    Traffic,
    UpstreamConnectError,
    relay,
    request_head,
    response_headers,
)
from voltgrid.gateway.upstream import UpstreamConnection, UpstreamError, UpstreamPool

logger = logging.getLogger(__name__)

#: A server close frame with code 1002 (protocol error), and one with 1001 (going away).
CLOSE_PROTOCOL_ERROR: Final = b"\x88\x02\x03\xea"
CLOSE_GOING_AWAY: Final = b"\x88\x02\x03\xe9"
MASK_BIT: Final = 0x80
#: Longest WebSocket frame header: 2 bytes, 8 of extended length, 4 of mask.
MAX_FRAME_HEADER: Final = 14
#: The client's handshake headers passed on as they are (the instance answers the handshake).
HANDSHAKE_HEADERS: Final = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
)


def is_websocket(request: Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def check_handshake(request: Request) -> None:
    """400 unless the handshake is one an instance could accept (checked before anything is placed)."""
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    key = request.headers.get("Sec-WebSocket-Key", "")
    try:
        key_ok = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        key_ok = False
    if "upgrade" not in connection or request.headers.get("Sec-WebSocket-Version") != "13" or not key_ok:
        raise bad_request(
            "invalid WebSocket handshake: it needs 'Connection: Upgrade', 'Sec-WebSocket-Version: 13'"
            " and a Sec-WebSocket-Key of 16 base64-encoded bytes",
            "bad_websocket_handshake",
        )


def relay_any(
    pool: UpstreamPool,
    request: Request,
    target: Target,
    path: str,
    headers: list[tuple[str, str]],
    *,
    traffic: Traffic,
    max_body: int,
    header_timeout: float,
    max_stream: float,
    connect_timeout: float | None = None,
    on_response: OnResponse | None = None,
    on_sse_endpoint: OnSseEndpoint | None = None,
    on_chunk: OnChunk | None = None,
) -> Coroutine[Any, Any, None]:
    """A WebSocket upgrade spliced (:func:`relay_websocket`), any other request relayed (:func:`relay`).

    It picks and returns the coroutine to await rather than awaiting it itself: one frame fewer on
    the path every request's resumptions walk."""
    if is_websocket(request):
        return relay_websocket(
            pool, request, target, path, headers, traffic=traffic, header_timeout=header_timeout, max_stream=max_stream
        )
    return relay(
        pool,
        request,
        target,
        path,
        headers,
        traffic=traffic,
        max_body=max_body,
        header_timeout=header_timeout,
        max_stream=max_stream,
        connect_timeout=connect_timeout,
        on_response=on_response,
        on_sse_endpoint=on_sse_endpoint,
        on_chunk=on_chunk,
    )


async def relay_websocket(
    pool: UpstreamPool,
    request: Request,
    target: Target,
    path: str,
    headers: list[tuple[str, str]],
    *,
    traffic: Traffic,
    header_timeout: float,
    max_stream: float,
) -> None:
    try:
        conn = await pool.connect(target.host, target.port, fresh=True)  # a handshake never on a stale one
    except UpstreamError as e:
        raise UpstreamConnectError(f"cannot connect to the instance: {e}") from None
    handshake = [(n, v) for n in HANDSHAKE_HEADERS if (v := request.headers.get(n)) is not None]
    head = request_head("GET", path, target, [*headers, *handshake], b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    try:
        async with asyncio.timeout(header_timeout):
            response = await conn.send("GET", head, final=True)
    except TimeoutError:
        conn.abort()
        raise GatewayError(504, "upstream_timeout", "the instance did not accept the WebSocket in time") from None
    except UpstreamError as e:
        conn.abort()
        raise GatewayError(502, "upstream_unavailable", f"cannot reach the instance: {e}") from None
    if response.status != 101 or not response.upgraded:
        conn.abort()
        raise GatewayError(502, "upstream_refused", f"the instance refused the WebSocket ({response.status})")
    traffic.status = 101
    out = response_headers(response, [("Connection", "Upgrade"), ("Upgrade", "websocket")])
    request.conn.start_response(request, 101, out, None)
    try:
        await _splice(request, conn, traffic, max_stream)
    finally:
        conn.abort()


async def _splice(request: Request, upstream: UpstreamConnection, traffic: Traffic, max_stream: float) -> None:
    client = request.conn
    done = asyncio.get_running_loop().create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    masks = MaskedFramesOnly()

    def from_client(data: bytes) -> None:
        if not masks.check(data):
            logger.warning("closed a WebSocket: the client sent a frame without a mask")
            client.write_raw(CLOSE_PROTOCOL_ERROR)
            finish()
            return
        traffic.bytes_in += len(data)
        upstream.write(data)

    def from_upstream(data: bytes) -> None:
        traffic.bytes_out += len(data)
        client.write_raw(data)

    def upstream_flow(paused: bool) -> None:  # the instance's side is full: stop reading the client
        (client.pause_reading if paused else client.resume_reading)()

    def client_flow(paused: bool) -> None:  # the client's side is full: stop reading the instance
        if upstream.transport is not None:
            (upstream.transport.pause_reading if paused else upstream.transport.resume_reading)()

    client.on_lost = finish
    upstream.on_upgraded_lost = finish
    upstream.on_write_flow = upstream_flow
    client.on_write_flow = client_flow
    client.on_upgraded_data = from_client
    upstream.on_upgraded_data = from_upstream
    if upstream.upgrade_rest:
        from_upstream(upstream.upgrade_rest)
    if client.upgrade_rest:
        from_client(client.upgrade_rest)
    client.resume_reading()  # paused at the upgrade until now
    try:
        async with asyncio.timeout(max_stream):
            await done
    except TimeoutError:
        client.write_raw(CLOSE_GOING_AWAY)
    finally:
        client.on_lost = None
        client.on_upgraded_data = None
        client.on_write_flow = None
        upstream.on_upgraded_data = None
        upstream.on_upgraded_lost = None
        upstream.on_write_flow = None


class MaskedFramesOnly:
    """Follows the frame headers of a client's byte stream: :meth:`check` is False once a frame
    without the mask bit is seen (nothing is buffered but a split header)."""

    def __init__(self) -> None:
        self._head = b""  # the start of a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._failed = False

    def check(self, data: bytes) -> bool:
        if self._failed:
            return False
        pos = 0
        while pos < len(data):
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            head = self._head + data[pos : pos + MAX_FRAME_HEADER - len(self._head)]
            if len(head) >= 2 and not head[1] & MASK_BIT:
                self._failed = True
                return False
            size = head[1] & 0x7F if len(head) >= 2 else 0
            extended = {126: 2, 127: 8}.get(size, 0)
            full = 2 + extended + 4
            if len(head) < full:  # the rest of the header comes with the next read
                self._head = head
                return True
            pos += full - len(self._head)
            self._head = b""
            self._skip = int.from_bytes(head[2 : 2 + extended], "big") if extended else size
        return True
