"""The streaming HTTP relay between a client and an instance (or the owning replica).

Bodies are never held whole: a request body with a known length up to :data:`SMALL_REQUEST_BODY`
is read at once, a larger or chunked one streams to the upstream as it arrives (while the answer
is awaited, since an upstream may answer before reading it all). Responses with a known length up
to :data:`~voltgrid.gateway.upstream.BUFFERED_RESPONSE` are sent in one write; the rest (SSE,
chunked, large) stream back as the upstream sends them, with the upstream paused while the client
is slow. Headers are rewritten on the way as bytes: hop-by-hop ones dropped, ``X-Forwarded-*`` set.
The relay reports how many bytes moved each way.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable, Collection, Iterable
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

from voltgrid.gateway import tracing
from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.http1 import ClientGoneError, Request
from voltgrid.gateway.peers import FORWARDED_HEADER, INTERNAL_TOKEN_HEADER
from voltgrid.gateway.upstream import IDEMPOTENT, UpstreamConnection, UpstreamError, UpstreamPool, UpstreamResponse

HOP_BY_HOP: Final = frozenset(
    h.lower()
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
        "Content-Length",
        "Expect",
        FORWARDED_HEADER,
        INTERNAL_TOKEN_HEADER,
    )
)
_HOP_BY_HOP_BYTES: Final = frozenset(h.encode() for h in HOP_BY_HOP)
#: What a client says about where it came from: replaced unless it is a trusted proxy (see Trust).
_FORWARDED: Final = frozenset(
    h.lower() for h in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
)
#: Request bodies up to this size with a known length are read at once instead of streamed.
SMALL_REQUEST_BODY: Final = 64 * 1024
#: Most bytes looked at for the legacy SSE transport's first ``endpoint`` event.
MAX_SSE_PRELUDE: Final = 64 * 1024
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})

#: Called with the upstream's answer before its head goes to the client; returns headers to add.
OnResponse = Callable[[UpstreamResponse], Awaitable[list[tuple[str, str]]]]
#: Called with the ``data`` of the SSE ``endpoint`` event; returns the data to send instead.
OnSseEndpoint = Callable[[str], Awaitable[str]]
#: Called with each piece of a streamed answer before it goes to the client (it may not change it).
OnChunk = Callable[[bytes], Awaitable[None]]


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
        self.client_error: BaseException | None = None


class Trust(enum.Enum):
    """How far the ``X-Forwarded-*`` headers a request arrives with are believed."""

    #: A client: its own values are replaced by what the gateway sees.
    CLIENT = "client"
    #: A proxy the settings trust: its values are kept, the proxy's address appended.
    PROXY = "proxy"
    #: Another replica (an internal hop): the values it set are final.
    REPLICA = "replica"


class Target:
    """Where a relay goes: ``host`` and ``port`` (or a unix socket path, port None) and a path prefix."""

    __slots__ = ("authority", "base", "host", "key", "port")

    def __init__(self, host: str, port: int | None, base: str = "", authority: str = "") -> None:
        self.host = host
        self.port = port
        self.base = base
        self.authority = authority or (f"{host}:{port}" if port is not None else "localhost")
        #: The pool's key of this upstream (see :meth:`UpstreamPool.take`).
        self.key = f"{host}:{port}" if port is not None else host


@lru_cache(maxsize=4096)
def target_of(url: str) -> Target:
    """The :class:`Target` of an ``http://host:port[/base]`` URL (instances and replicas)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 80
    return Target(host, port, parts.path.rstrip("/"), parts.netloc)


def upstream_headers(
    request: Request, extra: Iterable[tuple[str, str]] = (), trust: Trust = Trust.CLIENT
) -> list[tuple[str, str]]:
    """The request's headers minus hop-by-hop and internal ones, plus ``X-Forwarded-*`` (believed as
    far as ``trust`` says) and ``extra`` (which replace the client's headers of those names)."""
    extra = list(extra)
    headers = request.headers
    drop: Collection[str] = _dropped(trust, tuple(name for name, _ in extra))
    connection = headers.getall("Connection", ())
    if connection:  # the client's own hop-by-hop names (rare): a set of this request's
        drop = set(drop).union(t.strip().lower() for value in connection for t in value.split(","))
    out = [(name, value) for name, value in headers.items() if name.lower() not in drop]
    if trust is not Trust.REPLICA:
        prior = headers.get("X-Forwarded-For") if trust is Trust.PROXY else None
        out.append(("X-Forwarded-For", f"{prior}, {request.peer}" if prior else request.peer))
        believed = trust is Trust.PROXY
        if not (believed and "X-Forwarded-Proto" in headers):
            out.append(("X-Forwarded-Proto", request.scheme))
        host = headers.get("Host", "")
        if host and not (believed and "X-Forwarded-Host" in headers):
            out.append(("X-Forwarded-Host", host))
    out += extra
    return out


@lru_cache(maxsize=64)
def _dropped(trust: Trust, extra: tuple[str, ...]) -> frozenset[str]:
    """The lowercase names :func:`upstream_headers` drops for ``trust`` and the names of ``extra``
    (a few combinations, computed once each)."""
    drop = set(HOP_BY_HOP)
    drop.update(name.lower() for name in extra)
    if trust is Trust.CLIENT:
        drop.update(_FORWARDED)
    elif trust is Trust.PROXY:
        drop.add("x-forwarded-for")
    return frozenset(drop)


def trace_headers(headers: list[tuple[str, str]]) -> None:
    """Add the current span's ``traceparent`` to the upstream headers, replacing the caller's (when
    tracing is on; else the caller's pass unchanged: see :func:`voltgrid.gateway.tracing.enabled`)."""
    if not tracing.enabled():
        return
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    if carrier:
        names = {name.lower() for name in carrier}
        headers[:] = [(n, v) for n, v in headers if n.lower() not in names]
        headers += carrier.items()


def request_head(method: str, path: str, target: Target, headers: Iterable[tuple[str, str]], framing: bytes) -> bytes:
    """The bytes of a request's head to the upstream."""
    lines = [f"{method} {target.base}{path} HTTP/1.1\r\nHost: {target.authority}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    return "".join(lines).encode() + framing + b"\r\n"


def response_headers(response: UpstreamResponse, extra: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers for the client: hop-by-hop and framing ones dropped, ``extra`` added."""
    out = [(n, v) for n, v in response.headers if n.lower() not in _HOP_BY_HOP_BYTES]
    out += [(n.encode(), v.encode()) for n, v in extra]
    return out


async def relay(
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
) -> None:
    """Send ``request`` to ``target`` at ``path`` and stream the answer back to the client."""
    body = request.body
    small = not body.exists or (body.length is not None and body.length <= SMALL_REQUEST_BODY)
    data = await body.read_all(max_body) if body.exists and small else b""
    traffic.bytes_in = len(data)
    if small:
        framing = b"Content-Length: %d\r\n" % len(data) if data or request.method in _BODY_METHODS else b""
    else:
        framing = (
            b"Content-Length: %d\r\n" % body.length if body.length is not None else b"Transfer-Encoding: chunked\r\n"
        )
    head = request_head(request.method, path, target, headers, framing)
    for attempt in range(2):
        conn = pool.take(target.key) or await _connect(pool, target, connect_timeout)
        try:
            response = await _exchange(
                conn,
                request,
                head + data if small else head,
                streamed=not small,
                traffic=traffic,
                max_body=max_body,
                header_timeout=header_timeout,
            )
        except UpstreamError as e:
            conn.finish(None)
            request.conn.on_lost = None
            if e.sent_nothing and conn.reused and small and request.method in IDEMPOTENT and not attempt:
                continue  # the pooled connection was closed by the upstream as it was taken
            raise GatewayError(502, "upstream_error", f"the instance failed: {e}") from None
        if response.status == 101 or response.upgraded:  # not asked for: the request was no upgrade
            conn.finish(response)
            request.conn.on_lost = None
            raise GatewayError(502, "upstream_error", "the instance switched protocols unasked")
        try:
            await _answer(
                request,
                response,
                traffic=traffic,
                max_stream=max_stream,
                on_response=on_response,
                on_sse_endpoint=on_sse_endpoint,
                on_chunk=on_chunk,
            )
        finally:
            conn.finish(response)
            request.conn.on_lost = None
        return


async def _connect(pool: UpstreamPool, target: Target, connect_timeout: float | None) -> UpstreamConnection:
    """A new connection to ``target`` (the caller found no idle one: :meth:`UpstreamPool.take`)."""
    try:
        return await pool.connect(target.host, target.port, connect_timeout)
    except UpstreamError as e:
        raise UpstreamConnectError(f"cannot connect to the instance: {e}") from None


async def _exchange(
    conn: UpstreamConnection,
    request: Request,
    data: bytes,
    *,
    streamed: bool,
    traffic: Traffic,
    max_body: int,
    header_timeout: float,
) -> UpstreamResponse:
    """Send the request (``data``: its head, with the whole body unless ``streamed``) and await the
    answer's head (a streamed body is sent meanwhile)."""
    answer = conn.send(request.method, data, final=not streamed, timeout=header_timeout)
    exchange = conn.exchanges
    # A client that leaves ends this exchange, waits included (not a later one on the same connection).
    request.conn.on_lost = lambda: conn.abort_exchange(exchange)
    upload = asyncio.ensure_future(_upload(conn, request, traffic, max_body)) if streamed else None
    try:
        return await answer
    except UpstreamError as e:
        if traffic.client_error is not None:  # reading the client's body failed, not the instance
            raise traffic.client_error from None
        if e.timeout:
            raise GatewayError(504, "upstream_timeout", f"no response within {header_timeout}s") from None
        raise
    finally:
        if upload is not None and not upload.done():
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                conn.request_sent = False  # sent on while the answer streams: reused only if it ends
                _uploads.add(upload)  # kept until done (the loop holds tasks only weakly)
                upload.add_done_callback(_uploads.discard)
            else:
                upload.cancel()


#: Uploads still sending a body whose answer already came (an upstream may answer before it read
#: the whole body; the rest is still sent, or dropped with the connection when the client fails).
_uploads: set[asyncio.Future[None]] = set()


async def _upload(conn: UpstreamConnection, request: Request, traffic: Traffic, limit: int) -> None:
    chunked = request.body.length is None
    try:
        while chunk := await request.body.read():
            traffic.bytes_in += len(chunk)
            if traffic.bytes_in > limit:
                raise GatewayError(413, "body_too_large", f"request body exceeds {limit} bytes")
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
        conn.request_sent = True
    except UpstreamError:
        return  # the upstream went away: the answer's wait reports it
    except Exception as e:  # the client's body failed: kept for the answer, the upstream dropped
        traffic.client_error = e
        conn.abort()


async def _answer(
    request: Request,
    response: UpstreamResponse,
    *,
    traffic: Traffic,
    max_stream: float,
    on_response: OnResponse | None,
    on_sse_endpoint: OnSseEndpoint | None,
    on_chunk: OnChunk | None,
) -> None:
    client = request.conn
    traffic.status = response.status
    extra = await on_response(response) if on_response is not None else []
    headers = response_headers(response, extra)
    if response.body is not None:
        traffic.bytes_out = len(response.body)
        client.send_response(request, response.status, headers, response.body)
        return
    length = response.content_length if response.header(b"transfer-encoding") is None else None
    client.start_response(request, response.status, headers, length)
    if request.method == "HEAD":
        return
    await _pump(
        request,
        response,
        traffic,
        max_stream,
        on_sse_endpoint=on_sse_endpoint if response.is_sse else None,
        on_chunk=on_chunk,
    )


async def _pump(
    request: Request,
    response: UpstreamResponse,
    traffic: Traffic,
    max_stream: float,
    *,
    on_sse_endpoint: OnSseEndpoint | None,
    on_chunk: OnChunk | None,
) -> None:
    client = request.conn
    is_sse = response.is_sse
    try:
        async with asyncio.timeout(max_stream):
            if on_sse_endpoint is not None:
                prelude = await _sse_prelude(response, on_sse_endpoint)
                traffic.bytes_out += len(prelude)
                client.write(prelude)
            while chunk := await response.read():
                traffic.bytes_out += len(chunk)
                if on_chunk is not None:
                    await on_chunk(chunk)
                client.write(chunk)
                if client.writing_paused:
                    await client.drain()
        client.end_response()
    except TimeoutError:
        _end_with_error(request, is_sse, "stream_timeout", f"stream closed after {max_stream}s")
    except UpstreamError:
        if client.transport is None:
            raise ClientGoneError("the client closed the connection mid-stream") from None
        _end_with_error(request, is_sse, "upstream_error", "the instance ended the stream abnormally")


def _end_with_error(request: Request, is_sse: bool, code: str, message: str) -> None:
    """Tell the client the stream failed: an SSE ``error`` event, or a truncated body."""
    client = request.conn
    if is_sse and client.transport is not None:
        event = json.dumps({"error": {"code": code, "message": message}})
        client.write(f"event: error\ndata: {event}\n\n".encode())
        client.end_response()
        return
    client.abort()


async def _sse_prelude(response: UpstreamResponse, on_endpoint: OnSseEndpoint) -> bytes:
    """Read up to the first ``endpoint`` event (legacy MCP SSE), rewrite its data, return the bytes."""
    buffer = b""
    while len(buffer) < MAX_SSE_PRELUDE:
        chunk = await response.read()
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
