"""The invoke handler: place the request on an instance, relay it, learn what the instance minted.

For a new MCP session the ``Mcp-Session-Id`` of the response (Streamable HTTP) or the session in
the first ``endpoint`` event (legacy HTTP+SSE, whose path is also rewritten under the function's
prefix) becomes the session's key. A legacy SSE session lives as long as that stream: when the
client closes it (noticed within :data:`CLIENT_GONE_POLL`) or it ends, the session is ended on its
owner at once, not at ``idleTimeout``. A minted Header/Cookie id is returned to the client. If the
instance cannot be reached at all, it is forgotten and the session is woken elsewhere, once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final
from urllib.parse import parse_qs, urlsplit

from opentelemetry import trace

from voltgrid.api.function import Affinity
from voltgrid.backends.base import Instance
from voltgrid.gateway import a2a, tracing
from voltgrid.gateway.access import principal_of
from voltgrid.gateway.affinity import LEGACY_SSE_PARAMS, MCP_SESSION_HEADER, minted_headers
from voltgrid.gateway.core import Gateway
from voltgrid.gateway.forward import client_address, client_trust
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.gateway.http1 import Request
from voltgrid.gateway.lifecycle import Lifecycle
from voltgrid.gateway.proxy import Traffic, UpstreamConnectError, target_of, trace_headers, upstream_headers
from voltgrid.gateway.upstream import UpstreamResponse
from voltgrid.gateway.websocket import relay_any
from voltgrid.registry.ids import is_learned_key
from voltgrid.registry.records import SessionRecord

SESSION_ID_HEADER: Final = "X-Voltgrid-Session-Id"
HTTP_OK_MAX: Final = 299
_MCP_SESSION_HEADER: Final = MCP_SESSION_HEADER.lower().encode()
#: Seconds between checks whether the client of a legacy SSE stream has gone.
CLIENT_GONE_POLL: Final = 0.5


class Exchange:
    """The mutable state of one invocation (its session may be re-keyed mid-way)."""

    __slots__ = ("minted", "record", "traffic")

    def __init__(self, record: SessionRecord | None, minted: bool) -> None:
        self.record = record
        self.minted = minted
        self.traffic = Traffic()


async def invoke(gw: Gateway, request: Request) -> None:
    fn = request.function
    assert fn is not None
    key = request.key
    manager = gw.manager
    t0 = time.perf_counter()
    traced = tracing.enabled()
    span = trace.get_current_span() if traced else trace.INVALID_SPAN
    if traced:
        span.set_attribute(tracing.ATTR_FUNCTION, fn.key)
    if fn.affinity is Affinity.NONE or (fn.affinity is Affinity.A2A and request.a2a is None):
        await _invoke_shared(gw, request, fn)  # an A2A agent's card and other reads: no conversation
        return
    claims = request.claims
    principal = principal_of(claims) if claims is not None else None
    client = principal or client_address(gw.settings, request.headers, request.peer)

    def admit() -> None:
        gw.mint_limiter.take(fn.key, client)

    if key is None:
        admit()
        exchange = Exchange(await manager.new_session(fn, principal), minted=True)
    else:
        exchange = Exchange(manager.session_for(fn, key, principal, admit), minted=False)
    for attempt in range(2):
        record = exchange.record
        assert record is not None
        started = time.perf_counter() if traced else 0.0
        instance = manager.bound_instance(record)
        cold = False
        if instance is None:
            instance, cold = await manager.instance_for(fn, record)
        if traced:
            span.set_attribute(tracing.ATTR_SESSION, record.storage_id)
            span.set_attribute(tracing.ATTR_COLD_START, cold)
            span.set_attribute(tracing.ATTR_QUEUE_WAIT_MS, (time.perf_counter() - started) * 1000)
        manager.begin(record)
        try:
            await _relay(gw, request, fn, instance, exchange)
            return
        except UpstreamConnectError:
            if attempt:
                raise
            manager.lost_instance(instance.id)
        finally:
            manager.end(exchange.record or record, exchange.traffic)
            _done(gw, fn, exchange.traffic, t0)
    raise AssertionError("unreachable")


async def _relay(gw: Gateway, request: Request, fn: FunctionEntry, instance: Instance, exchange: Exchange) -> None:
    assert gw.lifecycle is not None
    lifecycle = gw.lifecycle
    record = exchange.record
    assert record is not None
    headers = upstream_headers(request, [(SESSION_ID_HEADER, record.storage_id)], client_trust(gw, request))
    trace_headers(headers)
    target = target_of(instance.url)
    settings = gw.settings
    ending = False

    learner = _A2ALearner(gw, fn, exchange) if fn.affinity is Affinity.A2A else None

    async def on_response(upstream: UpstreamResponse) -> list[tuple[str, str]]:
        nonlocal ending
        assert exchange.record is not None
        if learner is not None:
            if upstream.body is not None:
                await learner.learn(a2a.learn_from_result(upstream.body))
            return []
        if fn.affinity is Affinity.MCP:
            raw = upstream.header(_MCP_SESSION_HEADER)
            learned = raw.decode("latin-1") if raw else None
            if exchange.minted and learned and is_learned_key(learned):
                exchange.record = await lifecycle.learn(exchange.record, learned)
            ending = request.method == "DELETE" and not exchange.minted and upstream.status <= HTTP_OK_MAX
            return []
        return minted_headers(fn, exchange.record.key) if exchange.minted else []

    async def on_sse_endpoint(data: str) -> str:
        assert exchange.record is not None
        query = parse_qs(urlsplit(data).query)
        learned = next((query[p][0] for p in LEGACY_SSE_PARAMS if query.get(p)), None)
        if learned and is_learned_key(learned):
            exchange.record = await lifecycle.learn(exchange.record, learned)  # keeps the owner fresh
        return request.prefix + data if data.startswith("/") else data

    learn_sse = fn.affinity is Affinity.MCP and exchange.minted and request.method == "GET"
    # A known Header/Cookie session's answer teaches nothing and gets no header: no callback (and no
    # coroutine per request) for it.
    answered = on_response if learner is not None or fn.affinity is Affinity.MCP or exchange.minted else None
    gone = _ClientGone(request, exchange, lifecycle) if learn_sse else None
    try:
        await relay_any(
            gw.pool,
            request,
            target,
            request.tail,
            headers,
            traffic=exchange.traffic,
            max_body=settings.max_body_bytes,
            header_timeout=settings.upstream_timeout,
            max_stream=settings.max_stream_duration,
            on_response=answered,
            on_sse_endpoint=on_sse_endpoint if learn_sse else None,
            on_chunk=learner.on_chunk if learner is not None else None,
        )
    finally:
        if gone is not None:
            await gone.stream_ended()
    if ending and exchange.record is not None:
        lifecycle.end_session(exchange.record, "deleted")


class _A2ALearner:
    """What an A2A answer teaches, applied as it passes: its tasks are remembered, and a new
    conversation's session becomes its context's (the id the agent minted)."""

    def __init__(self, gw: Gateway, fn: FunctionEntry, exchange: Exchange) -> None:
        self._gw = gw
        self._fn = fn
        self._exchange = exchange
        self._scanner = a2a.StreamScanner()

    async def learn(self, learned: a2a.Learned) -> None:
        exchange = self._exchange
        assert exchange.record is not None and self._gw.lifecycle is not None
        if learned.tasks:
            self._gw.task_contexts(self._fn.key).remember(learned)
        context = learned.context_id
        if exchange.minted and context and is_learned_key(context) and context != exchange.record.key:
            exchange.record = await self._gw.lifecycle.learn(exchange.record, context)

    async def on_chunk(self, chunk: bytes) -> None:
        learned = self._scanner.feed(chunk)
        if learned is not a2a.NOTHING:
            await self.learn(learned)


class _ClientGone:
    """A legacy SSE stream is its session: end the session when the client leaves or the stream ends.

    The relay only notices a client that left on its next write (the server's next ping, seconds
    away), so the connection is polled. Ending the session releases its instance, which also ends
    the upstream stream and so the relay.
    """

    def __init__(self, request: Request, exchange: Exchange, lifecycle: Lifecycle) -> None:
        self._request = request
        self._exchange = exchange
        self._lifecycle = lifecycle
        self._minted = exchange.record.key if exchange.record is not None else ""
        self._ended = False
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        transport = self._request.conn.transport
        while transport is not None and not transport.is_closing():
            await asyncio.sleep(CLIENT_GONE_POLL)
            transport = self._request.conn.transport
        await self._end()

    async def _end(self) -> None:
        record = self._exchange.record
        if self._ended or record is None or record.key == self._minted:
            return  # ended already, or no session was learned (the stream failed before it)
        self._ended = True
        await self._lifecycle.end_everywhere(record.function, record.key, "closed")

    async def stream_ended(self) -> None:
        if not self._ended:
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.shield(self._end())


async def _invoke_shared(gw: Gateway, request: Request, fn: FunctionEntry) -> None:
    """Affinity None: least-in-flight instance, no session."""
    manager = gw.manager
    settings = gw.settings
    t0 = time.perf_counter()
    for attempt in range(2):
        instance, _ = await manager.least_loaded(fn)
        traffic = Traffic()
        counted = manager.begin_request(instance)
        headers = upstream_headers(request, trust=client_trust(gw, request))
        trace_headers(headers)
        target = target_of(instance.url)
        try:
            await relay_any(
                gw.pool,
                request,
                target,
                request.tail,
                headers,
                traffic=traffic,
                max_body=settings.max_body_bytes,
                header_timeout=settings.upstream_timeout,
                max_stream=settings.max_stream_duration,
            )
            return
        except UpstreamConnectError:
            if attempt:
                raise
            gone = manager.forget_instance(instance.id)
            if gone is not None:
                manager.spawn(gw.backend.delete(gone))
        finally:
            manager.end_request(counted)
            _done(gw, fn, traffic, t0)
    raise AssertionError("unreachable")


def _done(gw: Gateway, fn: FunctionEntry, traffic: Traffic, t0: float) -> None:
    gw.metrics.request_done(fn.key, traffic.status, time.perf_counter() - t0, traffic.bytes_in, traffic.bytes_out)
