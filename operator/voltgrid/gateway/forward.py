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
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from voltgrid.gateway import tracing
from voltgrid.gateway.core import GATEWAY
from voltgrid.gateway.peers import FORWARDED_HEADER
from voltgrid.gateway.proxy import Traffic, Trust, UpstreamConnectError, relay, upstream_headers
from voltgrid.gateway.websocket import is_websocket, relay_websocket

#: The address of the client a forwarded request came from (trusted only with the internal token):
#: the owner limits session minting per client (:mod:`voltgrid.gateway.ratelimit`).
CLIENT_HEADER: Final = "X-Voltgrid-Client"


def is_forwarded(request: web.Request, token: str) -> bool:
    value = request.headers.get(FORWARDED_HEADER)
    return value is not None and hmac.compare_digest(value.encode(), token.encode())


def client_trust(request: web.Request) -> Trust:
    """Whether the request's ``X-Forwarded-*`` come from another replica, a trusted proxy, or a client."""
    settings = request.app[GATEWAY].settings
    if is_forwarded(request, settings.internal_token):
        return Trust.REPLICA
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return Trust.CLIENT
    return Trust.PROXY if any(peer in net for net in settings.proxy_networks) else Trust.CLIENT


def client_address(request: web.Request, token: str, header: str | None = None) -> str:
    """The client's address: the one a forwarding replica vouches for, else the last address of the
    trusted proxy's ``header``, else the connection's."""
    if is_forwarded(request, token):
        return request.headers.get(CLIENT_HEADER) or request.remote or ""
    if header is not None:
        last = request.headers.get(header, "").rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.remote or ""


async def forward(request: web.Request, key: str, handler: Handler) -> web.StreamResponse:
    """Send the request to the owner of ``key`` (or serve it here if the owner is unreachable)."""
    gw = request.app[GATEWAY]
    assert gw.http is not None
    for _ in range(len(gw.membership.members)):
        owner = gw.membership.owner(key)
        if owner == gw.membership.self_id:
            break
        # The owner relays these X-Forwarded-* as they are (Trust.REPLICA): set here, as the client's,
        # and vouches for the client's address (the mint limit's key) in CLIENT_HEADER.
        client = client_address(request, gw.settings.internal_token, gw.settings.client_address_header)
        headers = upstream_headers(
            request, {FORWARDED_HEADER: gw.settings.internal_token, CLIENT_HEADER: client}, client_trust(request)
        )
        tracing.inject(headers)
        url = owner + request.raw_path
        traffic = Traffic()
        try:
            if is_websocket(request):
                response: web.StreamResponse = await relay_websocket(
                    gw.http,
                    request,
                    url,
                    headers,
                    traffic,
                    header_timeout=gw.settings.upstream_timeout,
                    max_stream=gw.settings.max_stream_duration,
                )
            else:
                response = await relay(
                    gw.http,
                    request,
                    url,
                    headers,
                    traffic,
                    max_body=gw.settings.max_body_bytes,
                    header_timeout=gw.settings.upstream_timeout + gw.settings.cold_start_timeout,
                    max_stream=gw.settings.max_stream_duration,
                    connect_timeout=gw.settings.forward_connect_timeout,
                )
        except UpstreamConnectError:
            gw.metrics.forwarded.labels("owner_unreachable").inc()
            gw.membership.suspect(owner)
            continue
        gw.metrics.forwarded.labels("ok").inc()
        return response
    return await handler(request)
