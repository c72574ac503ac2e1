"""Pooled keep-alive HTTP/1.1 connections to instances and to other replicas.

Each connection is an asyncio Protocol fed by httptools' C response parser. A response with a known
length of at most :data:`BUFFERED_RESPONSE` bytes (not SSE) is collected by the protocol and handed
over whole, so the usual request costs the relay one wake-up; anything else is handed over at its
head and its body read as it arrives, with the upstream's reading paused while the client is slow.

What the pool gets right (as nginx's upstream keepalive module and haproxy's http-reuse do): a
connection is reused only when the response was read to its end, the request was sent whole and
both sides said keep-alive; idle connections are capped per upstream and closed after
:data:`IDLE_TIMEOUT`; a request that fails on a *reused* connection before any byte of the answer
arrived is sent once more on a fresh connection if its method is idempotent (the upstream may have
closed the idle connection just as it was taken, the race every keep-alive client has).
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable
from typing import Final, cast

import httptools

#: Responses with a known length up to this size are collected whole before the relay sees them.
BUFFERED_RESPONSE: Final = 256 * 1024
#: Seconds an idle pooled connection is kept: below the 5 s keep-alive of common instance servers
#: (uvicorn, gunicorn), so the pool closes an idle connection before the upstream does.
IDLE_TIMEOUT: Final = 4.0
#: Idle connections kept per upstream; more are closed when they come back.
MAX_IDLE_PER_UPSTREAM: Final = 256
#: Most headers, and bytes of one header, an upstream's answer may have (llhttp sets no limit).
MAX_RESPONSE_HEADERS: Final = 200
MAX_RESPONSE_FIELD: Final = 64 * 1024
#: Bytes of a streamed response held before the upstream's reading is paused.
STREAM_HIGH_WATER: Final = 256 * 1024
#: Seconds a timer may fire before its deadline and count as due (loop timers have millisecond
#: resolution: one that fires a fraction of a millisecond early is not re-armed for the rest).
TIMER_SLACK: Final = 0.001
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
SSE_TYPE: Final = b"text/event-stream"


class UpstreamError(Exception):
    """The exchange with the upstream failed; ``sent_nothing`` says whether it may be re-placed."""

    def __init__(self, message: str, *, sent_nothing: bool = False, timeout: bool = False) -> None:
        super().__init__(message)
        self.sent_nothing = sent_nothing
        self.timeout = timeout


class UpstreamResponse:
    """The head of an upstream's answer, its body whole (``body``) or to be read (``read``)."""

    __slots__ = ("_conn", "body", "content_length", "content_type", "headers", "keep_alive", "status", "upgraded")

    def __init__(self, conn: UpstreamConnection, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self.body: bytes | None = None
        self.content_length: int | None = None
        self.content_type = b""
        self.keep_alive = True
        self.upgraded = False

    @property
    def is_sse(self) -> bool:
        return self.content_type.split(b";", 1)[0].strip().lower() == SSE_TYPE

    async def read(self) -> bytes:
        """The next piece of a streamed body; b"" at its end. UpstreamError if it ended abnormally."""
        return await self._conn.read_body()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase)."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class UpstreamConnection(asyncio.Protocol):
    """One connection; one exchange at a time."""

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self._pool = pool
        self.key = key
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[UpstreamResponse] | None = None
        #: The head timer: armed at most once per exchange and re-armed lazily (see :meth:`send`).
        self._timer: asyncio.TimerHandle | None = None
        #: Loop time the awaited head times out (inf: no timeout), and the timeout in seconds.
        self._head_due = math.inf
        self._head_seconds = 0.0
        #: In the pool, between exchanges: any byte from the upstream now closes the connection.
        self._idle = False
        #: Exchanges begun on this connection (which one a caller's callback is about).
        self.exchanges = 0
        self._in_head = False
        self._response: UpstreamResponse | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._buffered = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._complete = False
        self._failure: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self._reading_paused = False
        self._got_bytes = False
        self._head_only = False
        self.request_sent = False
        self.reused = False
        #: When it went back to the pool (loop time).
        self.idle_since = 0.0
        #: After a 101, the bytes the upstream sends go here (a WebSocket splice) instead of the parser.
        self.on_upgraded_data: Callable[[bytes], None] | None = None
        self.on_upgraded_lost: Callable[[], None] | None = None
        #: Told True when the transport's buffer is full and False once it drained (a splice's flow).
        self.on_write_flow: Callable[[bool], None] | None = None
        self.upgrade_rest = b""

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._response is not None and self._response.upgraded:
            if self.on_upgraded_data is not None:
                self.on_upgraded_data(data)
            else:
                self.upgrade_rest += data
            return
        if self._idle:  # an idle pooled connection the upstream writes to: not to be trusted again
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = int(e.args[0]) if e.args else len(data)
            self.upgrade_rest = data[offset:]
            if self._response is not None:
                self._response.upgraded = True
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause if isinstance(cause, UpstreamError) else UpstreamError(f"bad response: {cause!r}"))
            self.abort()
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"the instance sent a malformed response: {e}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.on_upgraded_lost is not None:
            self.on_upgraded_lost()
        response = self._response
        if response is not None and not self._complete and self._close_delimited(response):
            self._complete = True  # an answer without length ends when the upstream closes: complete
            self._wake()
        if not self._complete:
            self._fail(UpstreamError("the instance closed the connection", sent_nothing=not self._got_bytes))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamError("the instance closed the connection"))

    def _close_delimited(self, response: UpstreamResponse) -> bool:
        """The answer's end is the connection's (no length, not chunked, a body allowed)."""
        return (
            not response.keep_alive
            and not response.upgraded
            and response.content_length is None
            and response.header(b"transfer-encoding") is None
            and not self._head_only
            and response.status not in (204, 304)
        )

    def pause_writing(self) -> None:
        self._paused = True
        if self.on_write_flow is not None:
            self.on_write_flow(True)

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.on_write_flow is not None:
            self.on_write_flow(False)

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._idle or self._complete:  # bytes after the answer, or with none asked for: not HTTP we trust
            raise UpstreamError("the instance sent a response nobody asked for")
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a chunked answer's trailer: not relayed (as the request's), never kept
            return
        if len(self._headers) >= MAX_RESPONSE_HEADERS or len(name) + len(value) > MAX_RESPONSE_FIELD:
            raise UpstreamError("the instance sent too many or too large response headers")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # 100 Continue and friends: the answer comes next
            self._headers = []
            return
        response = UpstreamResponse(self, status, self._headers)
        self._headers = []
        length: int | None = None
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                try:  # noqa: SIM105 (per response: contextlib.suppress costs an object and two calls)
                    length = int(value)
                except ValueError:
                    pass
            elif lowered == b"content-type":
                response.content_type = value
        response.content_length = length
        response.keep_alive = self._parser.should_keep_alive()
        self._response = response
        if self._head_only or status == 101:
            self._buffered = False
            self._resolve_head()
            return
        self._buffered = length is not None and length <= BUFFERED_RESPONSE and not response.is_sse
        if not self._buffered:
            self._resolve_head()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if self._buffered:
            return
        self._queued += len(body)
        if self._queued > STREAM_HIGH_WATER and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._response is None:  # the end of a 1xx answer
            return
        self._complete = True
        if self._buffered:
            self._response.body = b"".join(self._chunks)
            self._chunks.clear()
            self._resolve_head()
            self._release()
        self._wake()

    # -- the exchange ---------------------------------------------------------------------------
    def send(
        self, method: str, data: bytes, *, final: bool, timeout: float | None = None
    ) -> asyncio.Future[UpstreamResponse]:
        """Write a request's head (and its whole body, with ``final``); the future is its answer's
        head, failed with a ``timeout`` UpstreamError (and the connection aborted) after ``timeout``."""
        assert self.transport is not None
        self._head = self._loop.create_future()
        self.exchanges += 1
        self._idle = False
        self._headers = []
        self._in_head = False
        if timeout is not None:
            # One timer per connection, not one per exchange (a timer costs microseconds to arm and
            # cancel): an armed one due no later than this head's deadline stays, and re-arms itself
            # for the deadline of the head pending when it fires.
            due = self._loop.time() + timeout
            self._head_due, self._head_seconds = due, timeout
            timer = self._timer
            if timer is None or timer.when() > due:
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(due, self._check_head)
        else:
            self._head_due = math.inf
        self._response = None
        self._complete = False
        self._failure = None
        self._got_bytes = False
        self._head_only = method == "HEAD"
        self.request_sent = final
        self._chunks.clear()
        self._queued = 0
        self.transport.write(data)
        return self._head

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise UpstreamError("the instance closed the connection")
        if self._paused:
            self._drain = self._loop.create_future()
            await self._drain

    async def read_body(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                if self._reading_paused and self._queued <= STREAM_HIGH_WATER // 2 and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                if not self._head_only:
                    self._release()  # read to its end: the connection may serve another exchange
                return b""
            if self._failure is not None:
                raise self._failure
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _check_head(self) -> None:
        self._timer = None
        head = self._head
        if head is None or head.done() or self._head_due == math.inf:
            return  # answered (or failed) already: the timer is not needed until the next exchange
        if self._head_due - self._loop.time() > TIMER_SLACK:  # a later exchange's deadline
            self._timer = self._loop.call_at(self._head_due, self._check_head)
            return
        head.set_exception(UpstreamError(f"no response within {self._head_seconds}s", timeout=True))
        self.abort()

    def _resolve_head(self) -> None:
        if self._head is not None and not self._head.done() and self._response is not None:
            self._head.set_result(self._response)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._failure = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _release(self) -> None:
        """Back to the pool if the exchange ended cleanly on both sides (a buffered body is already
        in the response the caller holds)."""
        response = self._response
        if (
            response is not None
            and response.keep_alive
            and not response.upgraded
            and response.status != 101
            and self.request_sent
            and self._failure is None
        ):
            self._response = None  # the exchange is over: finish() no longer applies to it
            self._idle = True
            self._pool.put(self)

    def finish(self, response: UpstreamResponse | None) -> None:
        """The caller is done with the exchange of ``response`` (None: it got no answer): unless the
        connection went back to the pool already, it is closed — its answer was not read to its
        end, or it was a HEAD answer whose framing the parser cannot know, or an upgrade."""
        if response is None or self._response is response:
            self.abort()  # unread answer bytes or an upload in flight: nothing of it is worth flushing

    def abort_exchange(self, exchange: int) -> None:
        """Abort the connection if it still serves ``exchange`` (not once it went back to the pool)."""
        if exchange == self.exchanges and not self._idle:
            self.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self._let_go()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self._let_go()

    def _let_go(self) -> None:
        """Out of the pool; whoever waits on this connection (a drain, a body read) fails now, not
        when a close that flushes first completes (it may never: a full socket buffer)."""
        self._pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamError("the connection to the instance was closed"))
        if not self._complete and self._failure is None:
            self._fail(UpstreamError("the connection to the instance was closed", sent_nothing=not self._got_bytes))


class UpstreamPool:
    """Idle connections per upstream (``host:port`` or a unix socket path), newest reused first."""

    def __init__(self, *, connect_timeout: float = 10.0) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[UpstreamConnection]] = {}
        #: Every open connection, idle or in use: closing the pool closes them all, so none outlives
        #: the gateway (one still in an exchange when the gateway stops, say).
        self._open_connections: set[UpstreamConnection] = set()
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    async def connect(
        self, host: str, port: int | None, connect_timeout: float | None = None, *, fresh: bool = False
    ) -> UpstreamConnection:
        """An idle connection to the upstream (unless ``fresh``), or a new one (UpstreamError
        ``sent_nothing`` if it cannot be opened: the caller may place the request elsewhere)."""
        key = f"{host}:{port}" if port is not None else host
        conn = None if fresh else self.take(key)
        return conn or await self._open(key, host, port, connect_timeout or self.connect_timeout)

    def take(self, key: str) -> UpstreamConnection | None:
        """An idle connection to ``key`` (``host:port``, or a unix socket path) still fit for a
        request, newest first; None when there is none. Not a coroutine: the usual request finds one."""
        idle = self._idle.get(key)
        if idle:
            now = idle[-1]._loop.time()
            while idle:
                conn = idle.pop()
                if (
                    conn.transport is not None
                    and not conn.transport.is_closing()
                    and now - conn.idle_since < IDLE_TIMEOUT
                ):
                    conn.reused = True
                    return conn
                conn.close()
        return None

    async def _open(self, key: str, host: str, port: int | None, seconds: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                if port is None:
                    _, conn = await loop.create_unix_connection(lambda: UpstreamConnection(self, key), host)
                else:
                    _, conn = await loop.create_connection(lambda: UpstreamConnection(self, key), host, port)
        except TimeoutError:
            raise UpstreamError(f"cannot connect to {key}: timed out", sent_nothing=True, timeout=True) from None
        except OSError as e:
            raise UpstreamError(f"cannot connect to {key}: {e.strerror or e}", sent_nothing=True) from None
        self._open_connections.add(conn)
        return conn

    def put(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if self._closed or len(idle) >= MAX_IDLE_PER_UPSTREAM or conn.transport is None:
            conn.close()
            return
        loop = conn._loop
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(IDLE_TIMEOUT, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for :data:`IDLE_TIMEOUT` (one timer per pool, not per connection)."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for idle in list(self._idle.values()):
            stale = [conn for conn in idle if now - conn.idle_since >= IDLE_TIMEOUT]
            for conn in stale:
                conn.close()
        if any(self._idle.values()) and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_TIMEOUT / 2, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        self._open_connections.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None:
            if conn in idle:
                idle.remove(conn)
            if not idle:
                del self._idle[conn.key]  # pod addresses come and go: no empty list left per address

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open_connections):
            conn.close()
        self._open_connections.clear()
        self._idle.clear()
