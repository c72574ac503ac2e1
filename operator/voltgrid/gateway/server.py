"""The gateway's connections: header-read and body-idle timeouts, a cap on pending connections.

aiohttp alone keeps a connection whose request head never completes for its keep-alive timeout,
waits forever for a body that stops half-way, and logs every malformed request with a traceback.
A client may do all three on purpose, so each gateway connection is a :class:`GuardedRequestHandler`:

* **header-read timeout** — from the connection's opening (or the first byte of a later request)
  the client has ``header_read_timeout`` seconds to send a complete request line and headers; then
  it is answered 408 and closed (slowloris);
* **body-idle timeout** — a body that sends nothing for ``body_idle_timeout`` seconds fails the
  read with a 408 :class:`BodyTimeoutError` (the relay answers it; the connection then closes).
  Time in which the gateway itself stopped reading (flow control) never counts;
* **pending cap** — at most ``max_pending_connections`` connections may be waiting for their
  request head at once; a connection beyond it is closed as it opens;
* **masked frames only** — a WebSocket client frame without a mask (RFC 6455 section 5.1) closes
  the connection with 1002 (protocol error), before the frame goes anywhere;
* **quiet rejections** — a malformed request or a client gone mid-request is one log line without
  traceback, at most :data:`LOG_BURST` lines per :data:`LOG_WINDOW` seconds (then a count).

:class:`GatewayRunner` is an ``AppRunner`` whose connections are guarded this way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_websocket import WebSocketReader
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from voltgrid.gateway.core import GATEWAY
from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

#: A server close frame with code 1002 (protocol error).
CLOSE_PROTOCOL_ERROR: Final = b"\x88\x02\x03\xea"
MASK_BIT: Final = 0x80
#: Longest WebSocket frame header: 2 bytes, 8 of extended length, 4 of mask.
MAX_FRAME_HEADER: Final = 14
#: Lines a burst of rejected requests may log per window; the rest are counted.
LOG_BURST: Final = 10
LOG_WINDOW: Final = 10.0


class BodyTimeoutError(GatewayError):
    """The client stopped sending its request body."""

    def __init__(self, idle: float) -> None:
        super().__init__(408, "body_timeout", f"the request body stalled: nothing arrived for {idle}s")


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
    """The limits shared by all connections of one server, and how many heads are pending."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.header_timeout = settings.header_read_timeout
        self.body_idle = settings.body_idle_timeout
        self.max_pending = settings.max_pending_connections
        self.pending = 0
        self.log = RateLimitedLog()


def _timeout_response(message: str) -> bytes:
    body = json.dumps({"error": {"code": "request_timeout", "message": message}}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedRequestHandler(RequestHandler):
    """An aiohttp connection with the timeouts and the quiet logging of the module docstring.

    It reads a few of ``RequestHandler``'s attributes (``_request_count``, ``_messages``,
    ``_upgraded``, ``_reading_paused``) to tell a pending head from a body in flight.
    """

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_since: float | None = None
        self._last_rx = 0.0
        self._body: StreamReader | None = None
        self._check_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        now = self._loop.time()
        if self._guard.pending >= self._guard.max_pending:
            pending = self._guard.pending
            self._guard.log.warning(now, "closed a connection: %d connections are waiting for a request head", pending)
            self.force_close()
            return
        self._last_rx = now
        self._set_head_pending(now)
        self._schedule(now)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._set_head_pending(None)
        if self._check_handle is not None:
            self._check_handle.cancel()
            self._check_handle = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self._last_rx = now
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._body = self._messages[-1][1] if self._messages else None
            self._set_head_pending(None)
            if self._in_body() and self._check_handle is not None:
                self._check_handle.cancel()  # due at the header timeout: the body's is sooner
                self._schedule(now)
        elif data and self._head_since is None and not self._upgraded and not self._in_body():
            self._set_head_pending(now)

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None) -> None:
        """aiohttp hands the WebSocket reader over here: frames are checked for a mask first."""
        checked = cast(WebSocketReader, _MaskedFramesOnly(parser, self._unmasked_frame))  # the same two methods
        super().set_parser(checked, data_received_cb)

    def _unmasked_frame(self) -> None:
        self._guard.log.warning(self._loop.time(), "closed a WebSocket: the client sent a frame without a mask")
        if self.transport is not None:
            self.transport.write(CLOSE_PROTOCOL_ERROR)
        self.force_close()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            self._guard.log.warning(self._loop.time(), "refused a request from %s: %s", peer, _describe(exc))
            return
        super().log_exception(*args, **kw)

    # -- timers ---------------------------------------------------------------------------------
    def _in_body(self) -> bool:
        body = self._body
        return body is not None and not body.is_eof() and body.exception() is None

    def _set_head_pending(self, since: float | None) -> None:
        if (self._head_since is None) != (since is None):
            self._guard.pending += 1 if since is not None else -1
        self._head_since = since

    def _schedule(self, now: float) -> None:
        if self._head_since is not None:
            due = self._head_since + self._guard.header_timeout
        elif self._in_body():
            due = self._last_rx + self._guard.body_idle
        else:
            due = now + min(self._guard.header_timeout, self._guard.body_idle)
        self._check_handle = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._check_handle = None
        if self.transport is None or self._force_close:
            return
        now = self._loop.time()
        if self._head_since is not None and now - self._head_since >= self._guard.header_timeout:
            self._timeout_head(now)
            return
        if self._in_body() and not self._upgraded:
            if self._reading_paused:  # the gateway stopped reading: the client is not idle
                self._last_rx = now
            elif now - self._last_rx >= self._guard.body_idle:
                self._timeout_body(now)
        self._schedule(now)

    def _timeout_head(self, now: float) -> None:
        limit = self._guard.header_timeout
        self._guard.log.warning(now, "closed a connection: no complete request head within %ss", limit)
        if self.transport is not None:
            self.transport.write(_timeout_response(f"no complete request head within {limit}s"))
        self.force_close()

    def _timeout_body(self, now: float) -> None:
        assert self._body is not None
        self._guard.log.warning(now, "request body stalled for %ss: answering 408", self._guard.body_idle)
        self._lingering_time = 0.0  # do not wait for the rest of the body after answering
        self.close()
        self._body.set_exception(BodyTimeoutError(self._guard.body_idle))


class _MaskedFramesOnly:
    """Stands in front of aiohttp's WebSocket reader and follows the frame headers: a frame without
    the mask bit calls ``on_unmasked`` and nothing more is read."""

    def __init__(self, reader: Any, on_unmasked: Callable[[], None]) -> None:
        self._reader = reader
        self._on_unmasked = on_unmasked
        self._head = b""  # the start of a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return False, b""
        if not self._all_masked(bytes(data)):
            self._failed = True
            self._on_unmasked()
            return False, b""
        result: tuple[bool, bytes] = self._reader.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _all_masked(self, data: bytes) -> bool:
        pos = 0
        while pos < len(data):
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            head = self._head + data[pos : pos + MAX_FRAME_HEADER - len(self._head)]
            if len(head) >= 2 and not head[1] & MASK_BIT:
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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _GuardedServer(web.Server):
    guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, self.guard, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` of a gateway application whose connections are :class:`GuardedRequestHandler`
    with the gateway's settings."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = ConnectionGuard(app[GATEWAY].settings)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds the Server itself (from the application's private parts); only the
        # connection factory changes, so the class is swapped rather than the construction copied.
        server.__class__ = _GuardedServer
        assert isinstance(server, _GuardedServer)
        server.guard = self._guard
        return server
