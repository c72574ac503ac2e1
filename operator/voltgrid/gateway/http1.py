"""The gateway's client connections: HTTP/1.1 on an asyncio Protocol fed by httptools' C parser.

Shaped like uvicorn's httptools protocol: the parser's callbacks build a :class:`Request`, the
request is handled by one task per burst of pipelined requests, its body is read as it arrives
(reading the socket pauses while the relay is slower than the client), and the response is written
with a ``Content-Length`` or chunked. Keep-alive and pipelining are handled here, so a request costs
the parse, the handler and two writes.

The connection enforces what a hostile client would exploit (the limits of the settings):

* **header-read timeout** — from the connection's opening, or the first byte of a later request,
  a complete request head must arrive within ``header_read_timeout``; else 408 and close (slowloris);
* **body-idle timeout** — a request body that sends nothing for ``body_idle_timeout`` fails its read
  with a 408 :class:`BodyTimeoutError`; time in which the gateway itself stopped reading never counts;
* **pending cap** — at most ``max_pending_connections`` connections wait for a request head at once;
  one beyond it is closed as it opens;
* **head limits** — a request line or header over ``max_field_bytes`` is 414/431, more than
  ``max_headers`` headers 431, and a malformed head 400, each closing the connection;
* **quiet rejections** — each is one log line without traceback, rate limited (:class:`RateLimitedLog`).

A body left unread when the answer was sent (an early 413, say) is read and dropped for a short
while before the connection closes, so the client sees the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import httptools
from multidict import CIMultiDict

from voltgrid.gateway.errors import GatewayError, error_body

if TYPE_CHECKING:
    from voltgrid.gateway.a2a import A2ARequest
    from voltgrid.gateway.functions import FunctionEntry
    from voltgrid.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

#: Lines a burst of rejected requests may log per window; the rest are counted.
LOG_BURST: Final = 10
LOG_WINDOW: Final = 10.0
#: Seconds an idle keep-alive connection is kept open (aiohttp's and Node's default).
KEEPALIVE_IDLE: Final = 75.0
#: Bytes of request body queued before reading the client's socket pauses.
BODY_HIGH_WATER: Final = 256 * 1024
#: After an answer that left the request body unread: seconds and bytes it is read and dropped.
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 1 << 20
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_REASONS: Final = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}
_NO_BODY_STATUS: Final = frozenset({204, 304})
#: Methods whose requests rarely carry a body (their framing headers are looked at only if present).
_BODYLESS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE"})


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d Status\r\n" % status


class BodyTimeoutError(GatewayError):
    """The client stopped sending its request body."""

    def __init__(self, idle: float) -> None:
        super().__init__(408, "body_timeout", f"the request body stalled: nothing arrived for {idle}s")


class ClientGoneError(ConnectionError):
    """The client closed its connection while its request was in flight."""


class RateLimitedLog:
    """One line per event, at most ``burst`` lines per ``window`` seconds; then a count of the rest."""

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW) -> None:
        self.burst = burst
        self.window = window
        self._window_start = float("-inf")
        self._lines = 0
        self._suppressed = 0

    def warning(self, now: float, message: str, *args: object) -> None:
        if now - self._window_start >= self.window:
            if self._suppressed:
                logger.warning("%d more rejected requests were not logged", self._suppressed)
            self._window_start, self._lines, self._suppressed = now, 0, 0
        if self._lines < self.burst:
            self._lines += 1
            logger.warning(message, *args)
        else:
            self._suppressed += 1


class ConnectionGuard:
    """The limits shared by all connections of one listener, and how many heads are pending."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.header_timeout = settings.header_read_timeout
        self.body_idle = settings.body_idle_timeout
        self.max_pending = settings.max_pending_connections
        self.max_field = settings.max_field_bytes
        self.max_headers = settings.max_headers
        self.pending = 0
        self.log = RateLimitedLog()


class RequestBody:
    """A request body as it arrives: ``read()`` the next piece (b"" at its end), or ``read_all``."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_queued",
        "_waiter",
        "eof",
        "exists",
        "expect_continue",
        "length",
        "received",
        "whole",
    )

    def __init__(self, conn: ClientConnection, length: int | None, exists: bool) -> None:
        self._conn = conn
        self.length = length
        self.exists = exists
        self.eof = not exists
        self.received = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: The body once read whole: kept, so a request placed again (another replica, another
        #: instance after a failed connect) sends it again.
        self.whole: bytes | None = None
        #: The client sent ``Expect: 100-continue``: it waits for ``100 Continue`` before the body,
        #: which the first read sends (so a request refused before its body is never asked for it).
        self.expect_continue = False

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued > BODY_HIGH_WATER:
            self._conn.pause_body()
        self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def set_exception(self, error: BaseException) -> None:
        if not self.eof and self._error is None:
            self._error = error
            self._wake()

    @property
    def in_progress(self) -> bool:
        return not self.eof and self._error is None

    async def read(self) -> bytes:
        if self.expect_continue:
            self.expect_continue = False
            self._conn.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                if self._queued <= BODY_HIGH_WATER // 2:
                    self._conn.resume_body()
                return chunk
            if self.eof:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read_all(self, limit: int) -> bytes:
        """The whole body; 413 past ``limit`` bytes."""
        if self.whole is not None:
            return self.whole
        parts = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, "body_too_large", f"request body exceeds {limit} bytes")
            parts.append(chunk)
        self.whole = b"".join(parts)
        return self.whole

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Request:
    """One request's head and body, and what the pipeline learned about it."""

    __slots__ = (
        "a2a",
        "body",
        "claims",
        "conn",
        "function",
        "headers",
        "keep_alive",
        "key",
        "method",
        "path",
        "peer",
        "prefix",
        "query",
        "raw_path",
        "scheme",
        "status",
        "tail",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        conn: ClientConnection,
        *,
        method: str,
        raw_path: str,
        version: str,
        headers: CIMultiDict[str],
        body: RequestBody,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.raw_path = raw_path
        path, _, query = raw_path.partition("?")
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.peer = conn.peer
        self.scheme = "http"
        self.status = 0
        self.function: FunctionEntry | None = None
        self.prefix = ""
        self.tail = raw_path
        self.key: str | None = None
        self.claims: dict[str, Any] | None = None
        #: An A2A Function's JSON-RPC request, as read for routing (None: not one).
        self.a2a: A2ARequest | None = None

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")


Handler = Callable[[Request], Awaitable[None]]


class ClientConnection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(
        self,
        guard: ConnectionGuard,
        handler: Handler,
        upgrade_h2: Callable[[ClientConnection, bytes], None] | None = None,
        on_close: Callable[[ClientConnection], None] | None = None,
    ) -> None:
        self._on_close = on_close
        self._guard = guard
        self._handler = handler
        self._upgrade_h2 = upgrade_h2
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._in_head = False
        self._body: RequestBody | None = None
        self._queue: collections.deque[Request] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        #: The connection's first bytes while they may still be HTTP/2's preface (None: decided).
        self._sniff: bytes | None = b"" if upgrade_h2 is not None else None
        self._head_since: float | None = None
        self._last_rx = 0.0
        self._check_handle: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._closing = False
        self._lingering = 0
        self._linger_handle: asyncio.TimerHandle | None = None
        self._chunked_out = False
        #: The request whose answer is being written (its headers sent).
        self.responding: Request | None = None
        self.headers_sent = False
        #: After an upgrade, the client's bytes go here (a WebSocket splice) instead of the parser.
        self.upgraded = False
        self.on_upgraded_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        #: Told True when the transport's buffer is full and False once it drained (a splice's flow).
        self.on_write_flow: Callable[[bool], None] | None = None
        self.upgrade_rest = b""

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        now = self._loop.time()
        if self._guard.pending >= self._guard.max_pending:
            self._guard.log.warning(
                now, "closed a connection: %d connections are waiting for a request head", self._guard.pending
            )
            transport.close()
            self.transport = None
            return
        self._last_rx = now
        self._set_head_pending(now)
        self._schedule(now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._set_head_pending(None)
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        if self._check_handle is not None:
            self._check_handle.cancel()
            self._check_handle = None
        if self._body is not None:
            self._body.set_exception(ClientGoneError("the client closed the connection mid-body"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ClientGoneError("the client closed the connection"))
        if self.on_lost is not None:
            self.on_lost()
        if self._on_close is not None:
            self._on_close(self)

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        if self.upgraded:
            if self.on_upgraded_data is not None:
                self.on_upgraded_data(data)
            else:  # before the splice (or no splice): held, reading paused until then
                self.upgrade_rest += data
                self.pause_reading()
            return
        if self._sniff is not None:  # the connection's first bytes: HTTP/2's preface, or HTTP/1.1
            data = self._sniff + data
            if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                self._sniff = data  # too few bytes to tell yet
                return
            self._sniff = None
            if self._upgrade_h2 is not None and data.startswith(H2_PREFACE):
                self._upgrade_h2(self, data)
                return
        if self._lingering:
            self._lingering -= len(data)
            if self._lingering <= 0:
                self._close()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = int(e.args[0]) if e.args else len(data)
            self.upgraded = True
            self.upgrade_rest = data[offset:]
            self.pause_reading()  # the client's next bytes wait for the splice (WebSocket) or the close
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _HeadTooLarge):
                self._refuse(cause.status, cause.code, str(cause))
            else:  # a bug in a callback, not the client's fault: still one line, and the connection ends
                logger.error("parsing a request from %s failed: %r", self.peer, cause)
                self._refuse(500, "internal", "the gateway failed to read the request; this is a bug")
        except httptools.HttpParserError as e:
            self._refuse(400, "bad_request", f"malformed request: {_describe(e)}")

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.on_write_flow is not None:
            self.on_write_flow(True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.on_write_flow is not None:
            self.on_write_flow(False)

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        if self._head_since is None:
            now = self._loop.time()
            self._set_head_pending(now)
            self._schedule(now)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._guard.max_field:
            raise _HeadTooLarge(414, "uri_too_long", f"the request line exceeds {self._guard.max_field} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a chunked body's trailer: not relayed (see proxy.py), not counted
            return
        if len(name) + len(value) > self._guard.max_field:
            raise _HeadTooLarge(431, "header_too_large", f"a header exceeds {self._guard.max_field} bytes")
        self._headers.append((name, value))
        if len(self._headers) > self._guard.max_headers:
            raise _HeadTooLarge(431, "too_many_headers", f"more than {self._guard.max_headers} headers")

    def on_headers_complete(self) -> None:
        self._set_head_pending(None)
        self._in_head = False
        if self._closing:  # pipelined behind an answer that closes the connection: never run
            self._body = None
            return
        parser = self._parser
        method = parser.get_method()
        try:
            headers = CIMultiDict([(n.decode("latin-1"), v.decode()) for n, v in self._headers])
        except UnicodeDecodeError:
            bad = next(n for n, v in self._headers if not _utf8(v)).decode("latin-1")
            raise _HeadTooLarge(400, "bad_header", f"header {bad!r} is not valid UTF-8") from None
        length: int | None = None
        chunked = False
        if method not in _BODYLESS or "Content-Length" in headers or "Transfer-Encoding" in headers:
            # Framed as llhttp frames it (it refuses both headers at once, or a TE not ending in chunked).
            length_text = headers.get("Content-Length", "").strip()
            length = int(length_text) if length_text.isascii() and length_text.isdigit() else None
            chunked = bool(headers.getall("Transfer-Encoding", ()))
        body = RequestBody(self, length, exists=chunked or bool(length))
        body.expect_continue = body.exists and headers.get("Expect", "").lower() == "100-continue"
        self._body = body
        request = Request(
            self,
            method=method.decode("ascii", "replace"),
            raw_path=self._url.decode("latin-1"),
            version=parser.get_http_version(),
            headers=headers,
            body=body,
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        self._queue.append(request)
        if self._task is None:
            self._task = self._loop.create_task(self._serve())
        if body.in_progress:
            self._schedule(self._loop.time())

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body.feed(body)

    def on_message_complete(self) -> None:
        if self._body is not None:
            self._body.feed_eof()
        if self._lingering:
            self._close()

    # -- serving --------------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self._queue and not self._closing:
                request = self._queue.popleft()
                self.headers_sent = False
                self.responding = None
                try:  # noqa: SIM105 (per request: contextlib.suppress costs an object and two calls)
                    await self._handler(request)
                except ClientGoneError:
                    pass
                if self.transport is None:
                    return
                if not self._finish(request):
                    return
        finally:
            self._task = None

    def _finish(self, request: Request) -> bool:
        """After an answer: True when the connection may serve the next request."""
        if request.body.in_progress and not self.upgraded:
            self._linger()
            return False
        if self.upgraded or not request.keep_alive or self._closing:
            self._close()
            return False
        self.headers_sent = False
        self.responding = None
        if self._head_since is None and not self._queue:
            self._schedule(self._loop.time())
        return True

    def _linger(self) -> None:
        """Read and drop the rest of the body for a short while, then close (see module docstring)."""
        self._closing = True
        self._lingering = LINGER_BYTES
        self._body = None  # what still arrives is dropped, never queued (nor paused on)
        self.resume_body()
        self._linger_handle = self._loop.call_later(LINGER_SECONDS, self._close)

    def hand_over(self) -> asyncio.Transport | None:
        """Give the connection to another protocol (HTTP/2): this one lets go of it and its timers."""
        transport = self.transport
        self.transport = None
        self._set_head_pending(None)
        if self._check_handle is not None:
            self._check_handle.cancel()
            self._check_handle = None
        if self._on_close is not None:
            self._on_close(self)
        return transport

    @property
    def busy(self) -> bool:
        """A request is being answered (or waits on this connection)."""
        return self._task is not None

    def close_when_idle(self) -> None:
        """Stop after the request in flight (if any): used when the server stops."""
        self._closing = True
        if self._task is None:
            self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # -- answering ------------------------------------------------------------------------------
    def send_response(
        self, request: Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> None:
        """The whole answer in one write (its ``Content-Length`` is set here)."""
        request.status = status
        self.responding = request
        self.headers_sent = True
        if self.transport is None:
            return
        keep = request.keep_alive and not self._closing and not request.body.in_progress
        parts = [status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if status not in _NO_BODY_STATUS:
            parts.append(b"content-length: %d\r\n" % len(body))
        if not keep:
            request.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if request.method != "HEAD":
            parts.append(body)
        self.transport.write(b"".join(parts))

    def start_response(
        self, request: Request, status: int, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> None:
        """The head of a streamed answer: with ``length``, or chunked (close-delimited for HTTP/1.0)."""
        request.status = status
        self.responding = request
        self.headers_sent = True
        if self.transport is None:
            raise ClientGoneError("the client closed the connection")
        parts = [status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        self._chunked_out = False
        if status == 101 or status in _NO_BODY_STATUS or request.method == "HEAD":
            if length is not None and request.method == "HEAD":
                parts.append(b"content-length: %d\r\n" % length)
        elif length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif request.version == "1.1":
            self._chunked_out = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            request.keep_alive = False
        if status != 101 and (not request.keep_alive or self._closing or request.body.in_progress):
            request.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.transport.write(b"".join(parts))

    def write(self, data: bytes) -> None:
        if self.transport is None:
            raise ClientGoneError("the client closed the connection")
        if not data:
            return
        if self._chunked_out:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def end_response(self) -> None:
        if self._chunked_out and self.transport is not None:
            self.transport.write(b"0\r\n\r\n")
        self._chunked_out = False

    async def drain(self) -> None:
        if self.transport is None:
            raise ClientGoneError("the client closed the connection")
        if self._writing_paused:
            self._drain = self._loop.create_future()
            await self._drain

    def abort(self) -> None:
        """End a streamed answer abnormally: the client sees a truncated body, not a clean end."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def write_raw(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    def pause_body(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_body(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._guard.log.warning(self._loop.time(), "refused a request from %s: %s", self.peer, message)
        self._answer_and_close(status, code, message)

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        """A JSON error answer, then the connection closes; with a request in flight nothing is
        written (the client would take it for that request's answer): it closes after that answer."""
        if self._task is not None:
            self._closing = True
            self.pause_reading()
            return
        if self.transport is not None and not self.headers_sent:
            body = error_body(code, message)
            self.transport.write(
                status_line(status)
                + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
        self._close()

    # -- timers ---------------------------------------------------------------------------------
    def _set_head_pending(self, since: float | None) -> None:
        if (self._head_since is None) != (since is None):
            self._guard.pending += 1 if since is not None else -1
        self._head_since = since

    def _schedule(self, now: float) -> None:
        """Have :meth:`_check` run when the earliest limit of the current state is due (a timer due
        sooner already does: it re-evaluates then, so most requests set no timer)."""
        body = self._body
        if self._head_since is not None:
            due = self._head_since + self._guard.header_timeout
        elif body is not None and body.in_progress:
            due = self._last_rx + self._guard.body_idle
        elif self._task is None:
            due = now + KEEPALIVE_IDLE
        else:
            due = now + min(self._guard.header_timeout, self._guard.body_idle)
        handle = self._check_handle
        if handle is not None:
            if handle.when() <= due:
                return
            handle.cancel()
        self._check_handle = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._check_handle = None
        if self.transport is None or self._closing or self.upgraded:
            return
        now = self._loop.time()
        body = self._body
        if self._head_since is not None:
            if now - self._head_since >= self._guard.header_timeout:
                limit = self._guard.header_timeout
                self._guard.log.warning(now, "closed a connection: no complete request head within %ss", limit)
                self._answer_and_close(408, "request_timeout", f"no complete request head within {limit}s")
                return
        elif body is not None and body.in_progress:
            if self._reading_paused:  # the gateway stopped reading: the client is not idle
                self._last_rx = now
            elif now - self._last_rx >= self._guard.body_idle:
                idle = self._guard.body_idle
                self._guard.log.warning(now, "request body stalled for %ss: answering 408", idle)
                self._closing = True
                body.set_exception(BodyTimeoutError(idle))
        elif self._task is None and now - self._last_rx >= KEEPALIVE_IDLE:
            self._close()
            return
        self._schedule(now)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the head breaks a limit (answered ``status`` and closed)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
