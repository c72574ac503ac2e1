"""One internal hop to the replica that owns a session.

The forwarded request carries :data:`~voltgrid.gateway.peers.FORWARDED_HEADER` with the shared
internal token, and a replica never forwards a request that carries it: so there is at most one hop
even while two replicas briefly disagree about membership. If the owner cannot be reached it is
suspected (dropped from membership for a while) and ownership is recomputed: the request is then
served here, or sent to the new owner.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from typing import Final

from voltgrid.gateway.core import Gateway
from voltgrid.gateway.http1 import Request
from voltgrid.gateway.peers import FORWARDED_HEADER
from voltgrid.gateway.proxy import (
    Traffic,
    Trust,
    UpstreamConnectError,
    target_of,
    trace_headers,
    upstream_headers,
)
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.gateway.websocket import relay_any

#: The address of the client a forwarded request came from (trusted only with the internal token):
#: the owner limits session minting per client (:mod:`voltgrid.gateway.ratelimit`).
CLIENT_HEADER: Final = "X-Voltgrid-Client"


def is_forwarded(headers: Mapping[str, str], token: str) -> bool:
    """The request was forwarded by another replica (it carries the internal token)."""
    value = headers.get(FORWARDED_HEADER)
    return value is not None and hmac.compare_digest(value.encode(), token.encode())


def client_trust(gw: Gateway, request: Request) -> Trust:
    """Whether the request's ``X-Forwarded-*`` come from another replica, a trusted proxy, or a client."""
    if is_forwarded(request.headers, gw.settings.internal_token):
        return Trust.REPLICA
    networks = gw.proxy_networks
    if not networks:
        return Trust.CLIENT
    try:
        peer = ipaddress.ip_address(request.peer)
    except ValueError:
        return Trust.CLIENT
    return Trust.PROXY if any(peer in net for net in networks) else Trust.CLIENT


def client_address(settings: GatewaySettings, headers: Mapping[str, str], peer: str) -> str:
    """The client's address (HTTP headers or gRPC metadata, and the connection's peer): the one a
    forwarding replica vouches for, else the last address of the trusted proxy's header, else the peer."""
    if is_forwarded(headers, settings.internal_token):
        return headers.get(CLIENT_HEADER) or peer
    if settings.client_address_header is not None:
        last = headers.get(settings.client_address_header, "").rsplit(",", 1)[-1].strip()
        if last:
            return last
    return peer


async def forward(gw: Gateway, request: Request, key: str) -> bool:
    """Send the request to the owner of ``key``; False when it is to be served here (this replica
    owns it now, the other owners being unreachable)."""
    settings = gw.settings
    for _ in range(len(gw.membership.members)):
        owner = gw.membership.owner(key)
        if owner == gw.membership.self_id:
            return False
        # The owner relays these X-Forwarded-* as they are (Trust.REPLICA): set here, as the client's,
        # and vouches for the client's address (the mint limit's key) in CLIENT_HEADER.
        extra = [
            (FORWARDED_HEADER, settings.internal_token),
            (CLIENT_HEADER, client_address(settings, request.headers, request.peer)),
        ]
        headers = upstream_headers(request, extra, client_trust(gw, request))
        trace_headers(headers)
        target = target_of(owner)
        traffic = Traffic()
        try:
            await relay_any(
                gw.pool,
                request,
                target,
                request.raw_path,
                headers,
                traffic=traffic,
                max_body=settings.max_body_bytes,
                header_timeout=settings.upstream_timeout + settings.cold_start_timeout,  # the owner may cold start
                max_stream=settings.max_stream_duration,
                connect_timeout=settings.forward_connect_timeout,
            )
        except UpstreamConnectError:
            gw.metrics.forwarded.labels("owner_unreachable").inc()
            gw.membership.suspect(owner)
            continue
        gw.metrics.forwarded.labels("ok").inc()
        return True
    return False
