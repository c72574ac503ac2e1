"""gRPC through the gateway: HTTP/2 (h2c) calls get the same steps as HTTP/1.1 requests.

A client connection that opens with the HTTP/2 preface is handed from the HTTP/1.1 protocol to
:class:`~voltgrid.gateway.h2relay.H2ServerProtocol`, and each gRPC call (one stream) goes through:
the function (``x-voltgrid-function: <namespace>/<name>`` metadata, else the default function),
its JWT policy (``authorization`` metadata; a refusal is UNAUTHENTICATED), its session key (the
Function's affinity header as metadata, e.g. ``x-voltgrid-session``; Header affinity only, as
cookies and MCP/A2A ids have no gRPC form), ownership (a call for a session another replica or
worker owns is relayed to it, once), placement on the session's instance (cold start, budget and
queue as for HTTP), and the relay over HTTP/2 to the instance (:func:`relay_grpc`: the four kinds of
call, ``grpc-timeout`` passed on and enforced, cancellation passed through). Gateway failures are a
gRPC status in trailers (one table: :func:`~voltgrid.gateway.h2relay.grpc_code_for`).

Plain (non-gRPC) HTTP/2 requests are refused with 505: instances are reached over HTTP/1.1 for
those, and the gateway does not translate one into the other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from multidict import CIMultiDict

from voltgrid.api.function import Affinity
from voltgrid.gateway.access import principal_of
from voltgrid.gateway.core import Gateway
from voltgrid.gateway.errors import GatewayError, bad_request, not_found
from voltgrid.gateway.forward import CLIENT_HEADER, client_address, is_forwarded
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.gateway.h2relay import (
    H2Limits,
    H2ServerProtocol,
    H2Stream,
    H2Upstream,
    H2UpstreamUnreachable,
    is_grpc,
    relay_grpc,
)
from voltgrid.gateway.http1 import ClientConnection
from voltgrid.gateway.invoke import SESSION_ID_HEADER
from voltgrid.gateway.peers import FORWARDED_HEADER, INTERNAL_TOKEN_HEADER
from voltgrid.gateway.proxy import Traffic, target_of

#: Metadata naming the function a call invokes (gRPC paths are ``/package.Service/Method``).
FUNCTION_METADATA: Final = "x-voltgrid-function"
_INTERNAL: Final = frozenset({FORWARDED_HEADER.lower(), INTERNAL_TOKEN_HEADER.lower(), CLIENT_HEADER.lower()})
_FORWARDED: Final = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"})


class GrpcFront:
    """The HTTP/2 side of one gateway process."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.pool = H2Upstream()
        settings = gateway.settings
        self.limits = H2Limits(max_body_bytes=settings.max_body_bytes, idle_timeout=settings.upstream_timeout)
        self._connections: set[H2ServerProtocol] = set()

    def take_over(self, conn: ClientConnection, initial: bytes) -> None:
        """Serve HTTP/2 on a connection whose first bytes were the preface."""
        transport = conn.hand_over()
        if transport is not None:
            protocol = H2ServerProtocol.take_over(transport, self.handle, initial, self.limits)
            self._connections.add(protocol)
            asyncio.ensure_future(protocol.wait_closed()).add_done_callback(
                lambda _: self._connections.discard(protocol)
            )

    async def close(self, grace: float) -> None:
        """GOAWAY on every HTTP/2 connection; calls in flight get ``grace`` seconds to finish."""
        await asyncio.gather(*(c.close(grace) for c in list(self._connections)), return_exceptions=True)
        await self.pool.close()

    async def handle(self, stream: H2Stream) -> None:
        if not is_grpc(stream):
            raise GatewayError(505, "http2_grpc_only", "HTTP/2 is served for gRPC calls; use HTTP/1.1 for others")
        gw = self.gateway
        fn = self._function(stream)
        claims = fn.verifier.verify(stream.header("authorization")) if fn.verifier is not None else None
        key = stream.header(fn.header.lower()) if fn.affinity is Affinity.HEADER else None
        if key is not None and (len(key) > 256 or not key.isprintable() or not key.isascii()):
            raise bad_request("malformed session id", "bad_session_id")
        metadata = CIMultiDict(stream.headers)
        forwarded = is_forwarded(metadata, gw.settings.internal_token)
        headers = [(n, v) for n, v in stream.headers if n not in _INTERNAL]
        if not forwarded:  # what a client says of where it came from is replaced, as for HTTP
            headers = [(n, v) for n, v in headers if n not in _FORWARDED]
            headers.append(("x-forwarded-for", stream.peer))
        if key and not forwarded and await self._forwarded(stream, key, headers):
            return
        principal = principal_of(claims) if claims is not None else None
        client = principal or client_address(gw.settings, metadata, stream.peer)
        await self._invoke(stream, fn, key, principal=principal, client=client, headers=headers)

    async def _forwarded(self, stream: H2Stream, key: str, headers: list[tuple[str, str]]) -> bool:
        """Relay the call to the owner of ``key`` (one hop); False when it is to be served here (this
        replica owns it, or every other owner is unreachable: each is suspected, as for HTTP)."""
        gw = self.gateway
        for _ in range(len(gw.membership.members)):
            owner_url = gw.membership.owner(key)
            if owner_url == gw.membership.self_id:
                return False
            owner = target_of(owner_url)
            try:
                await self.pool.connect(owner.host, owner.port or 80)
            except H2UpstreamUnreachable:
                gw.metrics.forwarded.labels("owner_unreachable").inc()
                gw.membership.suspect(owner_url)
                continue
            gw.metrics.forwarded.labels("ok").inc()
            hop = [(FORWARDED_HEADER.lower(), gw.settings.internal_token), (CLIENT_HEADER.lower(), stream.peer)]
            await relay_grpc(
                stream, self.pool, owner.host, owner.port or 80, stream.path, headers=headers, extra_headers=hop
            )
            return True
        return False

    def _function(self, stream: H2Stream) -> FunctionEntry:
        gw = self.gateway
        name = stream.header(FUNCTION_METADATA) or gw.settings.default_function
        fn = gw.catalog.get(name) if name else None
        if fn is None:
            raise not_found(f"no function to invoke: set {FUNCTION_METADATA} metadata", "function_not_found")
        return fn

    async def _invoke(
        self,
        stream: H2Stream,
        fn: FunctionEntry,
        key: str | None,
        *,
        principal: str | None,
        client: str,
        headers: list[tuple[str, str]],
    ) -> None:
        """Place the call on its session's instance (``client``: the key of the mint limit)."""
        gw = self.gateway
        manager = gw.manager
        t0 = time.perf_counter()
        traffic = Traffic()
        traffic.status = 200
        if fn.affinity is Affinity.NONE:
            instance, _ = await manager.least_loaded(fn)
            counted = manager.begin_request(instance)
            try:
                await self._relay(stream, instance.url, headers, [])
            finally:
                manager.end_request(counted)
                gw.metrics.request_done(fn.key, traffic.status, time.perf_counter() - t0, 0, 0)
            return

        def admit() -> None:
            gw.mint_limiter.take(fn.key, client)

        if key is None:
            admit()
            record = await manager.new_session(fn, principal)
        else:
            record = manager.session_for(fn, key, principal, admit)
        for attempt in range(2):
            instance, _ = await manager.instance_for(fn, record)
            target = target_of(instance.url)
            try:
                await self.pool.connect(target.host, target.port or 80)
            except H2UpstreamUnreachable:
                if attempt:
                    raise
                manager.lost_instance(instance.id)  # the pod is gone: wake the session elsewhere, once
                continue
            manager.begin(record)
            try:
                await self._relay(stream, instance.url, headers, [(SESSION_ID_HEADER.lower(), record.storage_id)])
            finally:
                manager.end(record, traffic)
                gw.metrics.request_done(fn.key, traffic.status, time.perf_counter() - t0, 0, 0)
            return

    async def _relay(
        self, stream: H2Stream, url: str, headers: list[tuple[str, str]], extra: list[tuple[str, str]]
    ) -> None:
        target = target_of(url)
        await relay_grpc(
            stream, self.pool, target.host, target.port or 80, stream.path, headers=headers, extra_headers=extra
        )
