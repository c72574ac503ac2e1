"""HTTP/2 for the gateway: a server protocol (h2c), an upstream client pool, and a gRPC relay.

All framing is the ``h2`` library's; this module only moves bytes between h2's state machines and
asyncio transports, and adds what a gateway needs on top:

* **Flow control as back-pressure.** Received DATA is acknowledged (the peer's window reopened)
  only when the consumer asks for the next chunk, so a slow upstream slows the client down instead
  of filling the gateway's memory, and vice versa. Sending waits for the peer's window
  (``WindowUpdated``) and for the transport's buffer (``pause_writing``).
* **Cancellation as asyncio cancellation.** A client's RST_STREAM cancels the task running the
  handler of that stream; cancelling a task that waits on an upstream response (or reads its body)
  sends RST_STREAM(CANCEL) upstream. A relay therefore propagates a cancel end to end for free.
* **Errors as :class:`GatewayError`.** Upstream failures say whether anything was sent
  (:class:`H2UpstreamUnreachable`: safe to retry elsewhere) or not (:class:`H2UpstreamFailed`);
  gRPC maps them, and every other GatewayError, to a ``grpc-status`` through one table.

The server protocol is transport-agnostic: it starts on the HTTP/2 preface whichever transport
carries it (plain TCP with prior knowledge, a transport taken over from an HTTP/1.1 protocol that
saw the preface, or TLS after ALPN ``h2``). Wiring, in short::

    pool = H2Upstream()

    async def handler(stream: H2Stream) -> None:      # one task per request stream
        if is_grpc(stream):
            await relay_grpc(stream, pool, host, port, stream.path)
        else:
            ...  # stream.body(), stream.send_headers(), stream.send_data(); or raise GatewayError

    server = await loop.create_server(lambda: H2ServerProtocol(handler, limits), host, port)
    # or, from an HTTP/1.1 protocol whose buffer starts with b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    # (or a TLS transport whose selected ALPN protocol is "h2", with initial=b""):
    protocol = H2ServerProtocol.take_over(transport, handler, initial=buffered, limits=limits)
    # shutdown: await protocol.close(grace) for each connection kept, then await pool.close()
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame

from voltgrid.gateway.errors import GatewayError, error_body

logger = logging.getLogger(__name__)

Headers = list[tuple[str, str]]
_T = TypeVar("_T")

#: Connection-specific headers HTTP/2 forbids (RFC 9113 section 8.2.2); h2 refuses to send them.
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "http2-settings"}
)
#: How many times a stream the upstream refused (so never processed) is sent again.
_REFUSED_RETRIES: Final = 4
#: h2's default window: what a peer may send before it has seen any WINDOW_UPDATE of ours.
_DEFAULT_WINDOW: Final = 65535


def _strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> Headers:
    """The headers without connection-specific ones; ``te`` survives only as ``trailers`` (gRPC needs it)."""
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower.startswith(":") or (lower == "te" and value.lower() != "trailers"):
            continue
        kept.append((lower, value))
    return kept


def _text(value: bytes | str, errors: str = "strict") -> str:
    """A header name or value as str (h2 hands out bytes with ``header_encoding=None``)."""
    return value if isinstance(value, str) else value.decode("utf-8", errors)


def _config(client_side: bool) -> h2.config.H2Configuration:
    """h2 settings of both ends: what arrives is validated; what leaves is not validated again.

    Relayed headers were validated when they arrived (at the other end), and the gateway's own are
    stripped of connection-specific ones, so outbound validation would only cost time (a third of
    h2's cost per relayed call).
    """
    return h2.config.H2Configuration(client_side=client_side, header_encoding=None, validate_outbound_headers=False)


@dataclass(frozen=True)
class H2Limits:
    """What one client connection may cost the gateway."""

    #: Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_concurrent_streams: int = 100
    #: Decoded size of a request's header list; beyond it the connection is refused (ENHANCE_YOUR_CALM).
    max_header_list_size: int = 64 * 1024
    #: Bytes of one stream's request body; beyond it ``body()`` raises a 413 GatewayError.
    max_body_bytes: int = 64 * 1024 * 1024
    #: Seconds a connection may stay without a stream before it is closed with GOAWAY.
    idle_timeout: float = 60.0
    #: Streams a client may reset per second: more is the "rapid reset" attack (CVE-2023-44487),
    #: each reset having cost a handler task; beyond it the connection ends with ENHANCE_YOUR_CALM.
    max_resets_per_second: int = 200
    #: Receive window of each stream: how much a client sends ahead of the handler's reading.
    stream_window: int = 1024 * 1024
    #: Receive window of the whole connection (all streams together).
    connection_window: int = 16 * 1024 * 1024


class StreamClosed(GatewayError):
    """The client's stream is gone (reset by the client, or the connection closed): nobody can hear an answer."""

    def __init__(self, message: str) -> None:
        super().__init__(499, "client_closed_request", message)


class H2UpstreamUnreachable(GatewayError):
    """Nothing reached the upstream (connect failed, or the stream was refused): safe to retry elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(502, "upstream_unavailable", message)


class H2StreamRefused(H2UpstreamUnreachable):
    """The upstream refused the stream (REFUSED_STREAM, or GOAWAY below its id): it processed nothing."""


class H2UpstreamFailed(GatewayError):
    """The upstream failed after the request was (perhaps partly) sent: not safe to retry blindly."""

    def __init__(self, message: str, error_code: int | None = None) -> None:
        super().__init__(502, "upstream_error", message)
        #: The upstream's RST_STREAM error code, if it reset the stream; None when the connection broke.
        self.error_code = error_code


# ---------------------------------------------------------------------------------------------
# What both ends share: one h2 state machine on one transport.
# ---------------------------------------------------------------------------------------------


class _H2Endpoint(asyncio.Protocol, abc.ABC):
    """An h2 connection on an asyncio transport: flushing, write back-pressure, flow-controlled sends."""

    def __init__(
        self, config: h2.config.H2Configuration, kind: type[h2.connection.H2Connection] = h2.connection.H2Connection
    ) -> None:
        self._conn = kind(config=config)
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        #: Senders waiting for the peer's window, by stream; set on any change that could let them go on.
        self._window_waiters: dict[int, asyncio.Event] = {}
        self._lost = False
        self._flush_scheduled = False

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _flush_soon(self) -> None:
        """Flush on the loop's next turn: the frames of one turn (headers, data, trailers, window updates
        of many streams) go out in one write instead of one system call each."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _wake_senders(self, stream_id: int | None = None) -> None:
        """Let senders re-check their window (``None``: all of them, for connection-wide changes)."""
        waiters = self._window_waiters.values() if stream_id is None else [self._window_waiters.get(stream_id)]
        for waiter in waiters:
            if waiter is not None:
                waiter.set()

    @property
    def lost(self) -> bool:
        """The transport is gone."""
        return self._lost

    def _mark_lost(self) -> None:
        self._lost = True
        self._writable.set()
        self._wake_senders()

    @abc.abstractmethod
    def _gone(self, stream_id: int, why: str) -> GatewayError:
        """The error a send on a dead stream raises (the subclass says whose fault it is)."""

    def _receive(self, data: bytes) -> list[h2.events.Event]:
        """h2's events for ``data``; raises h2's ProtocolError (or anything a parser may raise) on bad input."""
        events = self._conn.receive_data(data)
        # h2 checks a frame's length only once the whole frame is in, so a header announcing 16 MiB
        # would have it wait for (and buffer) 16 MiB; hyperframe reads the pending header now instead.
        pending = getattr(self._conn.incoming_buffer, "_data", b"")
        if len(pending) >= 9:
            _, length = Frame.parse_frame_header(memoryview(pending)[:9])
            if length > self._conn.max_inbound_frame_size:
                msg = f"a frame of {length} bytes, over SETTINGS_MAX_FRAME_SIZE"
                raise h2.exceptions.FrameTooLargeError(msg)
        return events

    async def _send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Send ``data`` within the peer's flow-control window, waiting for WINDOW_UPDATEs as needed."""
        if not data:
            if end_stream:
                self._h2_call(stream_id, lambda: self._conn.end_stream(stream_id))
            return
        event = self._window_waiters.setdefault(stream_id, asyncio.Event())
        view = memoryview(data)
        try:
            while view:
                await self._writable.wait()
                if self._lost:
                    raise self._gone(stream_id, "the connection closed")
                try:
                    window = self._conn.local_flow_control_window(stream_id)
                except h2.exceptions.ProtocolError:
                    raise self._gone(stream_id, "the stream was closed") from None
                if window <= 0:
                    event.clear()
                    await event.wait()
                    continue
                size = min(window, self._conn.max_outbound_frame_size)
                chunk, view = view[:size], view[size:]
                last = end_stream and not view
                self._h2_call(stream_id, functools.partial(self._conn.send_data, stream_id, chunk, end_stream=last))
        finally:
            self._window_waiters.pop(stream_id, None)

    def _h2_call(self, stream_id: int, call: Callable[[], _T]) -> _T:
        """Run one h2 send operation and flush; a closed stream or connection becomes ``_gone``."""
        if self._lost:
            raise self._gone(stream_id, "the connection closed")
        try:
            result = call()
        except h2.exceptions.StreamClosedError:
            raise self._gone(stream_id, "the stream was closed") from None
        except h2.exceptions.ProtocolError as e:
            raise self._gone(stream_id, f"the connection refused the frame: {e}") from None
        self._flush_soon()
        return result

    def _reset(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM, unless the stream or connection is already gone (a reset is best effort)."""
        if self._lost:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.reset_stream(stream_id, error_code)
            self._flush_soon()


# ---------------------------------------------------------------------------------------------
# Server side: the client's connection.
# ---------------------------------------------------------------------------------------------


class H2Stream:
    """One request stream, as the handler sees it: the request's head, its body, and the answer's sends."""

    def __init__(self, protocol: H2ServerProtocol, stream_id: int, headers: Headers, peer: str) -> None:
        self._protocol = protocol
        self.stream_id = stream_id
        self.peer = peer
        pseudo = {name: value for name, value in headers if name.startswith(":")}
        self.method = pseudo.get(":method", "")
        #: The raw path, query included (h2 has checked it is present and non-empty for non-CONNECT).
        self.path = pseudo.get(":path", "")
        self.authority = pseudo.get(":authority", "")
        self.scheme = pseudo.get(":scheme", "")
        self.headers: Headers = [(name, value) for name, value in headers if not name.startswith(":")]
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._data_ready = asyncio.Event()
        self._received = 0
        self._request_ended = False
        self._body_error: GatewayError | None = None
        #: Flow-controlled bytes of the chunk the handler holds: acknowledged when it asks for the next one.
        self._unacknowledged = 0
        #: True once response headers went out (a failure must then go into trailers or a reset).
        self.headers_sent = False
        #: True once the answer is complete (END_STREAM sent) or the stream was reset.
        self.finished = False
        #: True when the client reset the stream (its handler's task is then cancelled).
        self.reset_by_peer = False
        self._task: asyncio.Task[None] | None = None
        self._cancelled_by_protocol = False

    def header(self, name: str) -> str | None:
        """The first value of a (lowercase) request header, or None."""
        return next((value for key, value in self.headers if key == name), None)

    def body(self) -> AsyncIterator[bytes]:
        """The request body, chunk by chunk; each chunk is acknowledged to the client when the next is asked for.

        Raises a 413 :class:`GatewayError` once the body exceeds the limit, :class:`StreamClosed` if the
        stream is gone.
        """
        return _RequestBody(self)

    async def send_headers(self, status: int, headers: Iterable[tuple[str, str]], end_stream: bool = False) -> None:
        block = [(":status", str(status)), *_strip_hop_by_hop(headers)]
        self._protocol._h2_call(
            self.stream_id, lambda: self._protocol._conn.send_headers(self.stream_id, block, end_stream=end_stream)
        )
        self.headers_sent = True
        self.finished = end_stream

    async def send_data(self, chunk: bytes, end_stream: bool = False) -> None:
        """Send body bytes; waits while the client's window (or the socket's buffer) is full."""
        await self._protocol._send_data(self.stream_id, chunk, end_stream)
        self.finished = end_stream

    async def send_trailers(self, headers: Iterable[tuple[str, str]]) -> None:
        """Send trailers, which ends the stream."""
        block = _strip_hop_by_hop(headers)
        self._protocol._h2_call(
            self.stream_id, lambda: self._protocol._conn.send_headers(self.stream_id, block, end_stream=True)
        )
        self.finished = True

    def reset(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM to the client: the answer is abandoned."""
        self._protocol._reset(self.stream_id, error_code)
        self.finished = True

    def _take_data(self, data: bytes, flow_controlled: int, limit: int) -> bool:
        """Buffer received bytes; False when they are to be discarded (the body is over its limit)."""
        if self._body_error is not None:
            return False
        self._received += len(data)
        if self._received > limit:
            self._refuse_body(limit)
            return False
        self._chunks.append((data, flow_controlled))
        self._data_ready.set()
        return True

    def _refuse_body(self, limit: int) -> None:
        """The body is (or is declared) over the limit: reading it raises 413, its bytes are dropped."""
        self._body_error = GatewayError(413, "body_too_large", f"request body exceeds {limit} bytes")
        self._data_ready.set()

    def _end_request(self) -> None:
        self._request_ended = True
        self._data_ready.set()

    def _discard_buffered(self) -> int:
        """Drop unread chunks; the flow-controlled bytes they (and the last chunk read) held, for the connection."""
        held = sum(n for _, n in self._chunks) + self._unacknowledged
        self._chunks.clear()
        self._unacknowledged = 0
        return held


class _RequestBody:
    """Iterator over a stream's received DATA that acknowledges a chunk once the next one is requested."""

    def __init__(self, stream: H2Stream) -> None:
        self._stream = stream

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        if stream._unacknowledged:
            stream._protocol._acknowledge(stream.stream_id, stream._unacknowledged)
            stream._unacknowledged = 0
        while not stream._chunks:
            if stream._body_error is not None:
                raise stream._body_error
            if stream._request_ended:
                raise StopAsyncIteration
            if stream.reset_by_peer or stream._protocol._lost:
                raise StreamClosed("the client closed the stream")
            stream._data_ready.clear()
            await stream._data_ready.wait()
        if stream._body_error is not None:
            raise stream._body_error
        data, stream._unacknowledged = stream._chunks.popleft()
        return data


Handler = Callable[[H2Stream], Awaitable[None]]


class H2ServerProtocol(_H2Endpoint):
    """HTTP/2 server connection with prior knowledge: the client starts with the preface, then frames.

    ``handler(stream)`` runs in its own task per request stream. When the client resets the stream
    (or the connection is lost) that task is **cancelled**: the handler sees ``asyncio.CancelledError``
    at its current ``await`` (and ``stream.reset_by_peer`` is True); cleanups in ``finally`` run as
    usual. A :class:`GatewayError` escaping the handler is answered (gRPC status, or the JSON error
    body); any other exception is logged and answered 500, or the stream reset if headers went out.
    """

    def __init__(self, handler: Handler, limits: H2Limits | None = None) -> None:
        super().__init__(_config(client_side=False))
        self._handler = handler
        self._limits = limits or H2Limits()
        self._streams: dict[int, H2Stream] = {}
        self._peer = ""
        self._idle_timer: asyncio.TimerHandle | None = None
        #: Set while no stream is in flight (what ``close`` waits for).
        self._quiet = asyncio.Event()
        self._quiet.set()
        #: When the client's recent stream resets happened (for ``max_resets_per_second``).
        self._resets: deque[float] = deque()
        #: Highest stream id still served after a graceful GOAWAY (None: not draining).
        self._last_stream_id: int | None = None
        self._closed = asyncio.get_running_loop().create_future()

    @classmethod
    def take_over(
        cls, transport: asyncio.Transport, handler: Handler, initial: bytes, limits: H2Limits | None = None
    ) -> H2ServerProtocol:
        """Serve HTTP/2 on a connection another protocol began reading; ``initial``: the bytes it read."""
        protocol = cls(handler, limits)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if initial:
            protocol.data_received(initial)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it: no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self._peer = str(peername[0]) if isinstance(peername, tuple) and peername else ""
        limits = self._limits
        self._conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            },
        )
        # The decoder learns the setting only once the client acknowledges it; enforce it from the start.
        self._conn.decoder.max_header_list_size = limits.max_header_list_size
        self._conn.initiate_connection()
        if limits.connection_window > _DEFAULT_WINDOW:
            self._conn.increment_flow_control_window(limits.connection_window - _DEFAULT_WINDOW)
        self._flush()
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_lost()
        self._disarm_idle_timer()
        for stream in list(self._streams.values()):
            stream._data_ready.set()
            self._cancel_handler(stream)
        if not self._closed.done():
            self._closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            events = self._receive(data)
        except h2.exceptions.ProtocolError as e:
            self._refuse_connection(f"protocol error: {e}", ErrorCodes(e.error_code))
            return
        except Exception as e:  # hostile bytes must close one connection, never crash the loop
            self._refuse_connection(f"undecodable input: {type(e).__name__}: {e}", ErrorCodes.PROTOCOL_ERROR)
            return
        for event in events:
            if self._transport.is_closing():
                return  # refused midway (rapid resets): the rest of the batch is not served
            self._dispatch(event)
        self._flush()

    async def close(self, grace: float) -> None:
        """Graceful shutdown: GOAWAY (no new streams), wait up to ``grace`` seconds for streams in flight, then close.

        h2 moves its state machine to CLOSED when it sends GOAWAY (python-hyper/h2#1181), which would
        end the streams in flight; so the first GOAWAY is hyperframe's frame written beside h2, and
        h2's own (final) GOAWAY is sent once the streams are done.
        """
        if self._transport is None or self._transport.is_closing():
            return
        if self._last_stream_id is None:
            self._last_stream_id = self._conn.highest_inbound_stream_id
            self._flush()
            notice = GoAwayFrame(0, last_stream_id=self._last_stream_id, error_code=ErrorCodes.NO_ERROR)
            self._transport.write(notice.serialize())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._quiet.wait()
        tasks = [s._task for s in self._streams.values() if s._task is not None]
        for stream in list(self._streams.values()):
            self._cancel_handler(stream)
        if tasks:
            await asyncio.wait(tasks)
        self._goaway_and_close(ErrorCodes.NO_ERROR)
        try:
            async with asyncio.timeout(max(grace, 1.0)):
                await asyncio.shield(self._closed)
        except TimeoutError:
            # A client that reads nothing keeps the last bytes (and the socket) in flight forever.
            if self._transport is not None:
                self._transport.abort()
            await self._closed

    async def wait_closed(self) -> None:
        await self._closed

    # -- events -----------------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._start_stream(event)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.StreamEnded):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream._end_request()
        elif isinstance(event, h2.events.StreamReset):
            self._wake_senders(event.stream_id)
            self._count_reset()
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream.reset_by_peer = True
                stream.finished = True
                stream._data_ready.set()
                self._cancel_handler(stream)
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_senders(event.stream_id or None)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_senders()
        elif isinstance(event, h2.events.ConnectionTerminated):
            logger.debug("h2 client %s sent GOAWAY (%s)", self._peer, event.error_code)
            self._goaway_and_close(ErrorCodes.NO_ERROR)

    def _count_reset(self) -> None:
        now = time.monotonic()
        self._resets.append(now)
        while self._resets and self._resets[0] < now - 1.0:
            self._resets.popleft()
        if len(self._resets) > self._limits.max_resets_per_second:
            self._refuse_connection("too many stream resets (rapid reset)", ErrorCodes.ENHANCE_YOUR_CALM)

    def _start_stream(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._last_stream_id is not None and stream_id > self._last_stream_id:
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        try:
            headers = [(_text(k), _text(v)) for k, v in event.headers or []]
        except UnicodeDecodeError:
            logger.info("h2 client %s sent a header that is not UTF-8; stream %d reset", self._peer, stream_id)
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = H2Stream(self, stream_id, headers, self._peer)
        if event.stream_ended:
            stream._end_request()
        declared = stream.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limits.max_body_bytes:
            stream._refuse_body(self._limits.max_body_bytes)
        self._streams[stream_id] = stream
        self._quiet.clear()
        self._disarm_idle_timer()
        stream._task = asyncio.get_running_loop().create_task(self._serve(stream), name=f"h2-stream-{stream_id}")

    def _data(self, event: h2.events.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        size = event.flow_controlled_length or 0
        if (
            stream is None
            or stream.finished
            or not stream._take_data(event.data or b"", size, self._limits.max_body_bytes)
        ):
            # Nobody will read these bytes: give the connection its window back (only the connection's:
            # the stream's stays shut, so a client over its limit stalls instead of streaming into the void).
            self._give_back(size)

    def _acknowledge(self, stream_id: int, size: int) -> None:
        """The handler consumed ``size`` flow-controlled bytes: reopen the client's windows by that much."""
        if self._lost or not size:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.acknowledge_received_data(size, stream_id)
            self._flush_soon()

    def _give_back(self, size: int) -> None:
        if self._lost or not size:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.increment_flow_control_window(size)
            self._flush_soon()

    # -- stream lifecycle -------------------------------------------------------------------

    async def _serve(self, stream: H2Stream) -> None:
        try:
            await self._handler(stream)
        except asyncio.CancelledError:
            if not stream._cancelled_by_protocol:
                raise
        except GatewayError as e:
            await self._answer_error(stream, e)
        except Exception:
            logger.exception("h2 handler failed on %s %s", stream.method, stream.path)
            await self._answer_error(stream, GatewayError(500, "internal_error", "the gateway failed"))
        finally:
            self._finish(stream)

    async def _answer_error(self, stream: H2Stream, error: GatewayError) -> None:
        if stream.finished:
            return
        if stream.headers_sent:
            stream.reset(ErrorCodes.INTERNAL_ERROR)
            return
        with contextlib.suppress(StreamClosed):
            if is_grpc(stream):
                await grpc_error(stream, grpc_code_for(error), error.message)
            else:
                body = error_body(error.code, error.message)
                headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
                await stream.send_headers(error.status, [*headers, *_strip_hop_by_hop(error.headers.items())])
                await stream.send_data(body, end_stream=True)

    def _finish(self, stream: H2Stream) -> None:
        """The handler is done: end what it left open, free the stream's buffered window."""
        if stream.reset_by_peer:
            pass
        elif not stream.finished:
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        elif not stream._request_ended:
            # Answered before the request finished (an early error, a body over its limit): tell the
            # client to stop sending (RFC 9113 section 8.1).
            self._reset(stream.stream_id, ErrorCodes.NO_ERROR)
        self._give_back(stream._discard_buffered())
        self._streams.pop(stream.stream_id, None)
        if not self._streams:
            self._quiet.set()
            self._arm_idle_timer()

    def _cancel_handler(self, stream: H2Stream) -> None:
        if stream._task is not None and not stream._task.done():
            stream._cancelled_by_protocol = True
            stream._task.cancel()

    # -- connection lifecycle ---------------------------------------------------------------

    def _gone(self, stream_id: int, why: str) -> GatewayError:
        return StreamClosed(f"stream {stream_id}: {why}")

    def _arm_idle_timer(self) -> None:
        self._disarm_idle_timer()
        if not self._lost:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self._limits.idle_timeout, self._goaway_and_close, ErrorCodes.NO_ERROR)

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _refuse_connection(self, why: str, error_code: ErrorCodes) -> None:
        logger.info("h2 connection from %s closed: %s", self._peer or "?", why)
        self._goaway_and_close(error_code)

    def _goaway_and_close(self, error_code: ErrorCodes) -> None:
        """GOAWAY (unless h2 already queued one or the state forbids it), then close the transport."""
        if self._transport is None or self._transport.is_closing():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            if self._conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                self._conn.close_connection(error_code, last_stream_id=self._last_stream_id)
        self._flush()
        self._transport.close()


# ---------------------------------------------------------------------------------------------
# Upstream side: the gateway as an HTTP/2 client of the instances.
# ---------------------------------------------------------------------------------------------


class _UpstreamStream:
    """Client-side state of one request stream: the response as it arrives."""

    def __init__(self) -> None:
        self.response_head: asyncio.Future[tuple[int, Headers]] = asyncio.get_running_loop().create_future()
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.data_ready = asyncio.Event()
        self.ended = False
        self.trailers: Headers = []
        self.error: GatewayError | None = None

    def fail(self, error: GatewayError) -> None:
        if self.error is None and not self.ended:
            self.error = error
        if not self.response_head.done():
            self.response_head.set_exception(error)
            # Consumed or not, a failed head must not be reported as "never retrieved".
            self.response_head.exception()
        self.data_ready.set()


def _decode_headers(raw: Iterable[tuple[bytes | str, bytes | str]] | None) -> tuple[int, Headers]:
    status = 0
    headers: Headers = []
    for k, v in raw or []:
        name, value = _text(k), _text(v, errors="replace")
        if name == ":status":
            status = int(value)
        elif not name.startswith(":"):
            headers.append((name, value))
    return status, headers


class _GracefulClientConnection(h2.connection.H2Connection):
    """h2's connection, except that an upstream's GOAWAY lets the streams it accepted finish.

    h2 closes its state machine on a received GOAWAY and drops what is queued to send
    (python-hyper/h2#1181), which would fail every call in flight when an instance shuts down
    gracefully (grpcio's ``server.stop(grace)`` says GOAWAY, then finishes its calls). Here GOAWAY
    only reports ConnectionTerminated; the pool opens no new stream on the connection and closes it
    once its streams are done.
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _UpstreamConnection(_H2Endpoint):
    """One client connection to one instance, multiplexing the gateway's streams to it."""

    def __init__(
        self, stream_window: int, connection_window: int, on_lost: Callable[[_UpstreamConnection], None]
    ) -> None:
        super().__init__(_config(client_side=True), _GracefulClientConnection)
        self._on_lost = on_lost
        self._streams: dict[int, _UpstreamStream] = {}
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._slot_free = asyncio.Event()
        #: Set once the upstream's first SETTINGS arrived (its stream limit is known), or the connection ended.
        self.settled = asyncio.Event()
        #: False once the upstream sent GOAWAY or the connection failed: no new streams on it.
        self.usable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it: no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        self._conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._stream_window,
            },
        )
        self._conn.initiate_connection()
        if self._connection_window > _DEFAULT_WINDOW:
            self._conn.increment_flow_control_window(self._connection_window - _DEFAULT_WINDOW)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._mark_lost()
        self._slot_free.set()
        self.settled.set()
        for stream in self._streams.values():
            stream.fail(H2UpstreamFailed(f"the upstream connection closed: {exc or 'EOF'}"))
        self._streams.clear()
        self._on_lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._receive(data)
            for event in events:
                self._dispatch(event)
        except Exception as e:  # an instance's bad bytes end its connection, never the gateway's loop
            logger.warning("h2 upstream connection closed: it broke the protocol: %s: %s", type(e).__name__, e)
            self.usable = False
            with contextlib.suppress(h2.exceptions.ProtocolError):
                if self._conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                    self._conn.close_connection(ErrorCodes.PROTOCOL_ERROR)
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        self._flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            if (stream := self._streams.get(event.stream_id)) is not None and not stream.response_head.done():
                stream.response_head.set_result(_decode_headers(event.headers))
        elif isinstance(event, h2.events.TrailersReceived):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream.trailers = _decode_headers(event.headers)[1]
        elif isinstance(event, h2.events.DataReceived):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream.chunks.append((event.data or b"", event.flow_controlled_length or 0))
                stream.data_ready.set()
            else:
                self._acknowledge(event.stream_id, event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.StreamEnded):
            if (stream := self._streams.pop(event.stream_id, None)) is not None:
                stream.ended = True
                if not stream.response_head.done():
                    stream.fail(H2UpstreamFailed("the upstream ended the stream without a response"))
                stream.data_ready.set()
            self._stream_closed(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            if (stream := self._streams.pop(event.stream_id, None)) is not None:
                code = int(event.error_code or 0)
                if code == ErrorCodes.REFUSED_STREAM:
                    stream.fail(H2StreamRefused("the upstream refused the stream"))
                else:
                    stream.fail(H2UpstreamFailed(f"the upstream reset the stream ({code})", code))
            self._stream_closed(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_senders(event.stream_id or None)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_senders()
            self._slot_free.set()
            self.settled.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """The upstream is going away: no new streams here; those it did not take can go elsewhere.

        With NO_ERROR the streams it took finish (the connection closes after the last); with an
        error code they fail now.
        """
        self.usable = False
        self._slot_free.set()
        last = event.last_stream_id if event.last_stream_id is not None else 2**31 - 1
        graceful = event.error_code == ErrorCodes.NO_ERROR
        for stream_id, stream in list(self._streams.items()):
            if stream_id > last:
                stream.fail(H2StreamRefused("the upstream is going away (GOAWAY) and did not take the stream"))
            elif not graceful:
                stream.fail(H2UpstreamFailed(f"the upstream closed the connection (GOAWAY {event.error_code})"))
            else:
                continue
            self.cancel(stream_id)
        if not self._streams:
            self.close()

    def _stream_closed(self, stream_id: int) -> None:
        self._wake_senders(stream_id)
        self._slot_free.set()
        if not self.usable and not self._streams:
            self.close()

    def _gone(self, stream_id: int, why: str) -> GatewayError:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.error is not None:
            return stream.error
        return H2UpstreamFailed(f"upstream stream {stream_id}: {why}")

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if self._lost or not size:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.acknowledge_received_data(size, stream_id)
            self._flush_soon()

    async def open_stream(self, headers: Headers) -> tuple[int, _UpstreamStream]:
        """Start a request (HEADERS), waiting while the upstream's concurrent-stream limit is reached."""
        while self._conn.open_outbound_streams >= self._conn.remote_settings.max_concurrent_streams:
            if not self.usable:
                raise H2UpstreamUnreachable("the upstream connection closed before the stream started")
            self._slot_free.clear()
            await self._slot_free.wait()
        if not self.usable:
            raise H2UpstreamUnreachable("the upstream connection closed before the stream started")
        stream_id = self._conn.get_next_available_stream_id()
        stream = _UpstreamStream()
        self._streams[stream_id] = stream
        try:
            self._h2_call(stream_id, lambda: self._conn.send_headers(stream_id, headers))
        except GatewayError:
            del self._streams[stream_id]
            raise
        return stream_id, stream

    def cancel(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._reset(stream_id, ErrorCodes.CANCEL)
            self._stream_closed(stream_id)

    def close(self) -> None:
        self.usable = False
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.close_connection()
            self._flush()
            self._transport.close()


class _ReplayableBody:
    """A request body that keeps what it handed out (up to a limit) until the upstream accepts the stream.

    An upstream may refuse a stream (REFUSED_STREAM, or GOAWAY below its id) after some of the body
    went out; refused means unprocessed, so the request can go again, from the kept chunks.
    """

    def __init__(self, source: AsyncIterable[bytes], limit: int = 256 * 1024) -> None:
        self._source = source.__aiter__()
        self._limit = limit
        self._kept: list[bytes] | None = []
        self._kept_size = 0
        self._position = 0

    def __aiter__(self) -> _ReplayableBody:
        return self

    async def __anext__(self) -> bytes:
        if self._kept is not None and self._position < len(self._kept):
            self._position += 1
            return self._kept[self._position - 1]
        chunk = await self._source.__anext__()
        if self._kept is not None:
            self._kept_size += len(chunk)
            if self._kept_size > self._limit:
                self._kept = None
            else:
                self._kept.append(chunk)
                self._position += 1
        return chunk

    def rewind(self) -> bool:
        """Start again from the first chunk; False if too much was sent to keep it all."""
        self._position = 0
        return self._kept is not None

    def stop_keeping(self) -> None:
        self._kept = None


class UpstreamH2Response:
    """An upstream response: head now, body by ``async for``, trailers after the body.

    Reading acknowledges each chunk when the next is asked for (so a slow client back-pressures the
    upstream). Cancelling a task that reads it, or ``aclose()`` before the end, resets the upstream
    stream with CANCEL.
    """

    def __init__(
        self,
        connection: _UpstreamConnection,
        *,
        stream_id: int,
        stream: _UpstreamStream,
        status: int,
        headers: Headers,
        sender: asyncio.Task[None],
    ) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self._stream = stream
        self.status = status
        self.headers = headers
        self._sender = sender
        self._unacknowledged = 0
        self._closed = False

    @property
    def trailers(self) -> Headers:
        """The upstream's trailers (empty until the body is read, and if there were none)."""
        return self._stream.trailers

    @property
    def complete(self) -> bool:
        """The upstream ended the stream and every chunk was read."""
        return self._stream.ended and not self._stream.chunks

    def __aiter__(self) -> UpstreamH2Response:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        if self._unacknowledged:
            self._connection._acknowledge(self._stream_id, self._unacknowledged)
            self._unacknowledged = 0
        try:
            while not stream.chunks:
                if stream.error is not None:
                    raise stream.error
                if stream.ended:
                    raise StopAsyncIteration
                stream.data_ready.clear()
                await stream.data_ready.wait()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        data, self._unacknowledged = stream.chunks.popleft()
        return data

    async def aclose(self) -> None:
        """Abandon the response: RST_STREAM(CANCEL) if it is not complete; stop sending the request body."""
        if self._closed:
            return
        self._closed = True
        # Bytes never to be read still hold the connection's window: give it back.
        unread = self._unacknowledged + sum(n for _, n in self._stream.chunks)
        self._stream.chunks.clear()
        self._unacknowledged = 0
        if not self._stream.ended:
            self._connection.cancel(self._stream_id)
        elif not self._sender.done():
            # The upstream answered before the request body was all sent: stop its sending half.
            self._connection._reset(self._stream_id, ErrorCodes.CANCEL)
        self._connection._acknowledge(self._stream_id, unread)
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, GatewayError):
            await self._sender

    async def __aenter__(self) -> UpstreamH2Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class H2Upstream:
    """HTTP/2 (h2c) client pool: one connection per upstream host:port, many streams on each.

    A connection that closes (or says GOAWAY) is replaced on the next request. Streams beyond the
    upstream's SETTINGS_MAX_CONCURRENT_STREAMS wait for a free slot.
    """

    def __init__(
        self,
        connect_timeout: float = 5.0,
        stream_window: int = 1024 * 1024,
        connection_window: int = 16 * 1024 * 1024,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._connections: dict[tuple[str, int], _UpstreamConnection] = {}
        #: Connects in progress, shared by the requests that wait for the same upstream.
        self._connecting: dict[tuple[str, int], asyncio.Task[_UpstreamConnection]] = {}

    async def connect(self, host: str, port: int) -> None:
        """Open (or reuse) the connection to ``host:port`` now; :class:`H2UpstreamUnreachable` when it
        cannot be opened, so a caller can place the call elsewhere before anything is sent."""
        await self._connection(host, port)

    async def _connection(self, host: str, port: int) -> _UpstreamConnection:
        key = (host, port)
        connection = self._connections.get(key)
        if connection is not None and connection.usable and not connection.lost:
            return connection
        connecting = self._connecting.get(key)
        if connecting is None:
            connecting = asyncio.get_running_loop().create_task(self._connect(key), name=f"h2-connect-{host}:{port}")
            self._connecting[key] = connecting
            connecting.add_done_callback(functools.partial(self._connected, key))
        # Shielded: one waiter cancelled (its client gone) must not fail the others' connect.
        return await asyncio.shield(connecting)

    def _connected(self, key: tuple[str, int], connecting: asyncio.Task[_UpstreamConnection]) -> None:
        del self._connecting[key]
        if not connecting.cancelled() and connecting.exception() is None:
            self._connections[key] = connecting.result()

    async def _connect(self, key: tuple[str, int]) -> _UpstreamConnection:
        host, port = key
        connection = _UpstreamConnection(
            self._stream_window, self._connection_window, functools.partial(self._forget, key)
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.get_running_loop().create_connection(lambda: connection, host, port)
                # Streams opened before the upstream's SETTINGS would ignore its stream limit (and be refused).
                await connection.settled.wait()
        except (OSError, TimeoutError) as e:
            connection.close()
            raise H2UpstreamUnreachable(f"cannot connect to {host}:{port}: {type(e).__name__}: {e}") from None
        except BaseException:
            connection.close()
            raise
        if not connection.usable:
            raise H2UpstreamUnreachable(f"{host}:{port} closed the connection before its HTTP/2 SETTINGS")
        return connection

    def _forget(self, key: tuple[str, int], connection: _UpstreamConnection) -> None:
        """A connection closed: drop it, so that instances gone leave nothing behind."""
        if self._connections.get(key) is connection:
            del self._connections[key]

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        path: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: AsyncIterable[bytes] | None = None,
        authority: str | None = None,
    ) -> UpstreamH2Response:
        """Send a request and wait for the response's head; the body streams up concurrently.

        Raises :class:`H2UpstreamUnreachable` when nothing was sent (connect failure, refused stream:
        retry elsewhere), :class:`H2UpstreamFailed` after; an exception raised by ``body`` (a client
        gone, a body over its limit) resets the upstream stream and is raised here or by the reading.
        """
        block = [
            (":method", method),
            (":scheme", "http"),
            (":authority", authority or f"{host}:{port}"),
            (":path", path),
            *_strip_hop_by_hop(headers),
        ]
        replayable = _ReplayableBody(body) if body is not None else None
        attempt = 0
        while True:
            connection = await self._connection(host, port)
            try:
                return await self._attempt(connection, block, replayable)
            except H2StreamRefused:
                # Refused streams were not processed: send again while what was sent of the body is kept.
                attempt += 1
                if attempt > _REFUSED_RETRIES or (replayable is not None and not replayable.rewind()):
                    raise
                await asyncio.sleep(0.005 * 2**attempt)

    async def _attempt(
        self, connection: _UpstreamConnection, block: Headers, body: _ReplayableBody | None
    ) -> UpstreamH2Response:
        stream_id, stream = await connection.open_stream(block)
        sender = asyncio.get_running_loop().create_task(
            self._send_body(connection, stream_id, stream, body), name=f"h2-upstream-body-{stream_id}"
        )
        try:
            status, response_headers = await stream.response_head
        except BaseException:
            connection.cancel(stream_id)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, GatewayError):
                await sender
            raise
        if body is not None:
            body.stop_keeping()
        return UpstreamH2Response(
            connection, stream_id=stream_id, stream=stream, status=status, headers=response_headers, sender=sender
        )

    @staticmethod
    async def _send_body(
        connection: _UpstreamConnection, stream_id: int, stream: _UpstreamStream, body: AsyncIterable[bytes] | None
    ) -> None:
        """Stream the request body up; a failure of the body's source resets the stream and fails the response."""
        try:
            if body is not None:
                async for chunk in body:
                    if stream.error is not None or stream.ended:
                        return
                    await connection._send_data(stream_id, chunk, end_stream=False)
            if stream.error is None and not stream.ended:
                await connection._send_data(stream_id, b"", end_stream=True)
        except H2UpstreamFailed as e:
            stream.fail(e)
        except GatewayError as e:
            stream.fail(e)
            connection.cancel(stream_id)
        except Exception as e:  # the body's source failed: the upstream must not wait for the rest
            logger.warning("the request body for upstream stream %d failed: %s: %s", stream_id, type(e).__name__, e)
            stream.fail(H2UpstreamFailed(f"the request body failed: {type(e).__name__}"))
            connection.cancel(stream_id)

    async def close(self) -> None:
        """Close every connection (streams in flight fail with :class:`H2UpstreamFailed`)."""
        connecting = list(self._connecting.values())
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        for connection in list(self._connections.values()):
            connection.close()
        self._connections.clear()


# ---------------------------------------------------------------------------------------------
# gRPC over the two: status mapping, trailers-only errors, the relay.
# ---------------------------------------------------------------------------------------------


class GrpcStatus:
    """The gRPC status codes the gateway answers (grpc/doc/statuscodes.md)."""

    OK: Final = 0
    CANCELLED: Final = 1
    UNKNOWN: Final = 2
    INVALID_ARGUMENT: Final = 3
    DEADLINE_EXCEEDED: Final = 4
    NOT_FOUND: Final = 5
    ALREADY_EXISTS: Final = 6
    PERMISSION_DENIED: Final = 7
    RESOURCE_EXHAUSTED: Final = 8
    UNIMPLEMENTED: Final = 12
    INTERNAL: Final = 13
    UNAVAILABLE: Final = 14
    UNAUTHENTICATED: Final = 16


#: The one table from a gateway error's HTTP status to a gRPC status.
GRPC_CODE_BY_HTTP_STATUS: Final[dict[int, int]] = {
    400: GrpcStatus.INVALID_ARGUMENT,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.NOT_FOUND,
    409: GrpcStatus.ALREADY_EXISTS,
    413: GrpcStatus.RESOURCE_EXHAUSTED,
    429: GrpcStatus.RESOURCE_EXHAUSTED,
    499: GrpcStatus.CANCELLED,
    500: GrpcStatus.INTERNAL,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.DEADLINE_EXCEEDED,
}
#: Gateway error codes whose status alone says too little: a 503 at a budget limit is exhaustion, not an outage.
GRPC_CODE_BY_ERROR_CODE: Final[dict[str, int]] = {
    "max_instances": GrpcStatus.RESOURCE_EXHAUSTED,
    "too_many_sessions": GrpcStatus.RESOURCE_EXHAUSTED,
}
#: How an upstream's RST_STREAM error code reads to a gRPC client (gRPC's HTTP/2 transport spec).
_GRPC_CODE_BY_RST: Final[dict[int, int]] = {
    ErrorCodes.REFUSED_STREAM: GrpcStatus.UNAVAILABLE,
    ErrorCodes.CANCEL: GrpcStatus.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: GrpcStatus.PERMISSION_DENIED,
}


def grpc_code_for(error: GatewayError) -> int:
    """The gRPC status a client of the gateway gets for ``error``."""
    if isinstance(error, H2UpstreamFailed) and error.error_code is not None:
        return _GRPC_CODE_BY_RST.get(error.error_code, GrpcStatus.INTERNAL)
    if error.code in GRPC_CODE_BY_ERROR_CODE:
        return GRPC_CODE_BY_ERROR_CODE[error.code]
    return GRPC_CODE_BY_HTTP_STATUS.get(error.status, GrpcStatus.UNKNOWN)


def is_grpc(stream: H2Stream) -> bool:
    content_type = stream.header("content-type") or ""
    return content_type == "application/grpc" or content_type.startswith(("application/grpc+", "application/grpc;"))


def _grpc_message(message: str) -> str:
    """Percent-encode a grpc-message as the gRPC spec asks (printable ASCII except '%' stays)."""
    return urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


async def grpc_error(stream: H2Stream, code: int, message: str) -> None:
    """Fail a gRPC call: trailers-only (HTTP 200 + grpc-status) before headers, else in the trailers."""
    status = [("grpc-status", str(code)), ("grpc-message", _grpc_message(message))]
    if stream.finished:
        return
    if stream.headers_sent:
        await stream.send_trailers(status)
    else:
        await stream.send_headers(200, [("content-type", "application/grpc"), *status], end_stream=True)


_GRPC_TIMEOUT_UNITS: Final[dict[str, float]] = {
    "H": 3600.0,
    "M": 60.0,
    "S": 1.0,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
}


def parse_grpc_timeout(value: str | None) -> float | None:
    """Seconds of a ``grpc-timeout`` header (``"100m"``, ``"5S"``...), or None if absent or malformed."""
    if not value or len(value) > 9 or value[-1] not in _GRPC_TIMEOUT_UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _GRPC_TIMEOUT_UNITS[value[-1]]


async def relay_grpc(
    stream: H2Stream,
    upstream_pool: H2Upstream,
    host: str,
    port: int,
    path: str,
    *,
    headers: Iterable[tuple[str, str]] | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Relay one gRPC call to ``host:port`` (any of the four kinds: both directions stream concurrently).

    The request's headers go up (``headers``, when given, replaces them: to drop credentials, say),
    then ``extra_headers``. ``grpc-timeout`` passes through and is also the gateway's deadline: past
    it the upstream stream is cancelled and the client gets DEADLINE_EXCEEDED. Upstream trailers
    (grpc-status, grpc-message, metadata) pass back; gateway-side failures become a gRPC status.
    """
    timeout = parse_grpc_timeout(stream.header("grpc-timeout"))
    started = time.monotonic()
    headers = [*(stream.headers if headers is None else headers), *extra_headers]
    try:
        async with asyncio.timeout(timeout):
            response = await upstream_pool.request(
                host, port, "POST", path, headers=headers, body=stream.body(), authority=stream.authority or None
            )
            async with response:
                if response.complete and not response.trailers:
                    # Trailers-only response: the head carries grpc-status and ends the stream.
                    await stream.send_headers(response.status, response.headers, end_stream=True)
                    return
                await stream.send_headers(response.status, response.headers)
                async for chunk in response:
                    await stream.send_data(chunk)
                if response.trailers:
                    await stream.send_trailers(response.trailers)
                else:
                    await grpc_error(stream, GrpcStatus.INTERNAL, "the upstream ended the call without a grpc-status")
    except TimeoutError:
        elapsed = time.monotonic() - started
        await grpc_error(stream, GrpcStatus.DEADLINE_EXCEEDED, f"deadline exceeded after {elapsed:.3f}s at the gateway")
    except StreamClosed:
        return
    except GatewayError as e:
        await grpc_error(stream, grpc_code_for(e), e.message)
