"""Session affinity: which key of a request names its session, and how a minted id is returned.

``Header``: the named header. ``Cookie``: the named cookie. ``MCP``: the ``Mcp-Session-Id``
header (Streamable HTTP), or the ``session_id``/``sessionId`` query parameter that the legacy
HTTP+SSE transport puts on its POSTs. ``None``: no key, least-in-flight balancing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qs

from voltgrid.api.function import Affinity
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.gateway.http1 import Request

MCP_SESSION_HEADER: Final = "Mcp-Session-Id"
LEGACY_SSE_PARAMS: Final = ("session_id", "sessionId")


def session_key(fn: FunctionEntry, request: Request) -> str | None:
    """The request's session key, or None when it starts a new session (or has no affinity)."""
    affinity = fn.affinity
    if affinity is Affinity.HEADER:
        return request.headers.get(fn.header) or None
    if affinity is Affinity.COOKIE:
        return cookie(request.headers.getall("Cookie", ()), fn.cookie)
    if affinity is Affinity.MCP:
        key = request.headers.get(MCP_SESSION_HEADER)
        if key:
            return key
        if request.query:
            query = parse_qs(request.query)
            for name in LEGACY_SSE_PARAMS:
                if query.get(name):
                    return query[name][0]
    return None


def cookie(headers: Iterable[str], name: str) -> str | None:
    """The value of cookie ``name`` in ``Cookie`` headers (RFC 6265 section 5.4: ``a=b; c=d``)."""
    for header in headers:
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                value = value.strip()
                return (value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value) or None
    return None


def minted_headers(fn: FunctionEntry, session_id: str) -> list[tuple[str, str]]:
    """Response headers that hand a newly minted session id to the client."""
    if fn.affinity is Affinity.HEADER:
        return [(fn.header, session_id)]
    if fn.affinity is Affinity.COOKIE:
        max_age = int(fn.max_lifetime)
        return [("Set-Cookie", f"{fn.cookie}={session_id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax")]
    return []
