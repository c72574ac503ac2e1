"""The streaming HTTP relay between a client and an instance (or the owning replica).

Bodies are never held whole: request bodies stream to the upstream as they arrive (small ones
with a known length are read at once, which is faster), and responses stream back chunk by chunk
as the upstream sends them, so SSE and chunked responses reach the client unbuffered. Only small
responses with a known length are read whole. The relay reports how many bytes moved each way.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, istr

from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.peers import FORWARDED_HEADER, INTERNAL_TOKEN_HEADER

HOP_BY_HOP: Final = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        FORWARDED_HEADER,
        INTERNAL_TOKEN_HEADER,
    )
)
#: What a client says about where it came from: replaced unless it is a trusted proxy (see Trust).
_FORWARDED: Final = frozenset(
    istr(h) for h in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
)
#: Request bodies up to this size with a known length are read at once instead of streamed.
SMALL_REQUEST_BODY: Final = 64 * 1024
#: Responses up to this size with a known length are read at once instead of streamed.
SMALL_RESPONSE_BODY: Final = 256 * 1024
#: Most bytes looked at for the legacy SSE transport's first ``endpoint`` event.
MAX_SSE_PRELUDE: Final = 64 * 1024
SSE_TYPE: Final = "text/event-stream"

#: Called with the upstream response before headers go to the client; returns headers to add.
OnResponse = Callable[[aiohttp.ClientResponse], Awaitable[list[tuple[str, str]]]]
#: Called with the ``data`` of the SSE ``endpoint`` event; returns the data to send instead.
OnSseEndpoint = Callable[[str], Awaitable[str]]


class UpstreamConnectError(GatewayError):
    """The upstream could not be reached at all (nothing was sent): safe to retry elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(502, "upstream_unavailable", message)


class Traffic:
    """Bytes moved by one exchange (request body in, response body out); ``client_error`` is why
    reading the client's body failed (too large, stalled, the client left), if it did."""

    __slots__ = ("bytes_in", "bytes_out", "client_error", "status")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self.client_error: Exception | None = None


class Trust(enum.Enum):
    """How far the ``X-Forwarded-*`` headers a request arrives with are believed."""

    #: A client: its own values are replaced by what the gateway sees.
    CLIENT = "client"
    #: A proxy the settings trust: its values are kept, the proxy's address appended.
    PROXY = "proxy"
    #: Another replica (an internal hop): the values it set are final.
    REPLICA = "replica"


def upstream_headers(
    request: web.Request, extra: Mapping[str, str] | None = None, trust: Trust = Trust.CLIENT
) -> CIMultiDict[str]:
    """The request's headers minus hop-by-hop and internal ones, plus ``X-Forwarded-*`` (believed as
    far as ``trust`` says) and ``extra``."""
    headers: CIMultiDict[str] = CIMultiDict()
    connection = request.headers.get(hdrs.CONNECTION)
    listed = {istr(t.strip()) for t in connection.split(",")} if connection else set()
    drop = _FORWARDED if trust is Trust.CLIENT else frozenset()
    for name, value in request.headers.items():
        if name not in HOP_BY_HOP and name not in listed and name not in drop:
            headers.add(name, value)
    if trust is not Trust.REPLICA:
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For") if trust is Trust.PROXY else None
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        if request.host:
            headers.setdefault("X-Forwarded-Host", request.host)
    if extra:
        headers.update(extra)
    return headers


async def _stream_body(request: web.Request, traffic: Traffic, limit: int) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.content.iter_any():
            traffic.bytes_in += len(chunk)
            if traffic.bytes_in > limit:
                raise GatewayError(413, "body_too_large", f"request body exceeds {limit} bytes")
            yield chunk
    except Exception as e:  # the HTTP client wraps it in its own error: kept to answer the client
        traffic.client_error = e
        raise


async def _request_body(request: web.Request, traffic: Traffic, limit: int) -> bytes | AsyncIterator[bytes] | None:
    if not request.body_exists:
        return None
    length = request.content_length
    if length is not None and length <= SMALL_REQUEST_BODY:
        body = await request.read()
        traffic.bytes_in = len(body)
        return body
    return _stream_body(request, traffic, limit)


def _response_headers(upstream: aiohttp.ClientResponse, drop_length: bool) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        if name in HOP_BY_HOP or (drop_length and name == hdrs.CONTENT_LENGTH):
            continue
        headers.add(name, value)
    return headers


async def relay(
    http: aiohttp.ClientSession,
    request: web.Request,
    url: str,
    headers: CIMultiDict[str],
    traffic: Traffic,
    *,
    max_body: int,
    header_timeout: float,
    max_stream: float,
    connect_timeout: float | None = None,
    on_response: OnResponse | None = None,
    on_sse_endpoint: OnSseEndpoint | None = None,
) -> web.StreamResponse:
    """Send ``request`` to ``url`` and stream the answer back to the client (``connect_timeout``
    replaces the pool's connect timeout, e.g. for a hop to another replica)."""
    data = await _request_body(request, traffic, max_body)
    try:
        upstream = await _send(
            http, request, url, headers, data, header_timeout=header_timeout, connect_timeout=connect_timeout
        )
    except Exception:
        if traffic.client_error is None:
            raise
        raise traffic.client_error from None  # reading the client's body failed, not the instance
    try:
        traffic.status = upstream.status
        extra = await on_response(upstream) if on_response is not None else []
        length = upstream.content_length
        is_sse = upstream.content_type == SSE_TYPE
        if length is not None and length <= SMALL_RESPONSE_BODY and not is_sse:
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, OSError) as e:
                raise GatewayError(502, "upstream_error", f"the instance failed: {type(e).__name__}") from None
            traffic.bytes_out = len(body)
            out_headers = _response_headers(upstream, True)
            out_headers.extend(extra)
            return web.Response(status=upstream.status, body=body, headers=out_headers)
        stream_headers = _response_headers(upstream, False)
        stream_headers.extend(extra)
        response = web.StreamResponse(status=upstream.status, headers=stream_headers)
        await response.prepare(request)
        await _pump(
            upstream,
            response,
            traffic,
            max_stream=max_stream,
            on_sse_endpoint=on_sse_endpoint if is_sse else None,
            is_sse=is_sse,
        )
        return response
    finally:
        upstream.release()


async def _send(
    http: aiohttp.ClientSession,
    request: web.Request,
    url: str,
    headers: CIMultiDict[str],
    data: bytes | AsyncIterator[bytes] | None,
    *,
    header_timeout: float,
    connect_timeout: float | None,
) -> aiohttp.ClientResponse:
    """The upstream's response (headers); the request's failure classified (see :class:`UpstreamConnectError`)."""
    options: dict[str, Any] = {}
    if connect_timeout is not None:
        options["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
    try:
        async with asyncio.timeout(header_timeout):
            return await http.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                **options,
            )
    except aiohttp.ConnectionTimeoutError as e:
        # Checked before TimeoutError (it is one): nothing was sent, so the caller may re-place the
        # request, e.g. the instance's pod is gone and its IP no longer answers.
        raise UpstreamConnectError(f"cannot connect to the instance: {e}") from None
    except TimeoutError:
        raise GatewayError(504, "upstream_timeout", f"no response within {header_timeout}s") from None
    except aiohttp.ClientConnectorError as e:
        raise UpstreamConnectError(f"cannot connect to the instance: {e.os_error or e}") from None
    except (aiohttp.ClientError, OSError) as e:
        raise GatewayError(502, "upstream_error", f"the instance failed: {type(e).__name__}: {e}") from None


async def _pump(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    traffic: Traffic,
    *,
    max_stream: float,
    on_sse_endpoint: OnSseEndpoint | None,
    is_sse: bool,
) -> None:
    try:
        async with asyncio.timeout(max_stream):
            if on_sse_endpoint is not None:
                prelude = await _sse_prelude(upstream, on_sse_endpoint)
                traffic.bytes_out += len(prelude)
                await response.write(prelude)
            async for chunk in upstream.content.iter_any():
                traffic.bytes_out += len(chunk)
                await response.write(chunk)
        await response.write_eof()
    except TimeoutError:
        await _end_with_error(response, is_sse, "stream_timeout", f"stream closed after {max_stream}s")
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        await _end_with_error(response, is_sse, "upstream_error", "the instance ended the stream abnormally")
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass  # the client went away; releasing the upstream response closes the instance side


async def _end_with_error(response: web.StreamResponse, is_sse: bool, code: str, message: str) -> None:
    """Tell the client the stream failed: an SSE ``error`` event, or a truncated chunked body."""
    try:
        if is_sse:
            event = json.dumps({"error": {"code": code, "message": message}})
            await response.write(f"event: error\ndata: {event}\n\n".encode())
            await response.write_eof()
            return
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass
    response.force_close()
    transport = response._req.transport if response._req is not None else None
    if transport is not None:
        transport.abort()


async def _sse_prelude(upstream: aiohttp.ClientResponse, on_endpoint: OnSseEndpoint) -> bytes:
    """Read up to the first ``endpoint`` event (legacy MCP SSE), rewrite its data, return the bytes."""
    buffer = b""
    while len(buffer) < MAX_SSE_PRELUDE:
        chunk = await upstream.content.readany()
        if not chunk:
            return buffer
        buffer += chunk
        normalized = buffer.replace(b"\r\n", b"\n")
        start = 0
        while (end := normalized.find(b"\n\n", start)) != -1:
            lines = normalized[start:end].decode("utf-8", "replace").split("\n")
            if "event: endpoint" in lines or "event:endpoint" in lines:
                data = "\n".join(line[5:].lstrip(" ") for line in lines if line.startswith("data:"))
                rewritten = await on_endpoint(data)
                event = "event: endpoint\ndata: " + rewritten + "\n\n"
                return normalized[:start] + event.encode() + normalized[end + 2 :]
            start = end + 2
    return buffer
