"""Streaming relays of the admin application: a request passed on, its answer streamed back.

The Sandbox API (to a sandbox's agent, or the replica owning it) and the CloudEvents ingress (to the
trigger dispatcher) pass requests whose bodies and answers may be large or long (file uploads, NDJSON
execution events): both ways stream with back-pressure, nothing is buffered whole.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiohttp
from aiohttp import web

from voltgrid.gateway.core import GATEWAY
from voltgrid.gateway.errors import GatewayError

#: Headers of an answer passed back.
_ANSWERED: Final = frozenset({"content-type", "retry-after", "www-authenticate", "cache-control"})
READ_CHUNK: Final = 256 * 1024


async def relay(
    request: web.Request,
    url: str,
    headers: dict[str, str],
    body: bytes | None = None,
    prepared: list[web.StreamResponse] | None = None,
    *,
    what: str = "the sandbox or its replica",
    unreachable: str = "sandbox_unreachable",
    failed: str = "sandbox_failed",
) -> web.StreamResponse:
    """``request`` sent to ``url`` and its answer streamed back, both ways, with back-pressure
    (the answer, once its head is sent, is put in ``prepared``)."""
    gw = request.app[GATEWAY]
    assert gw.http is not None
    data: Any = (
        body if body is not None else (request.content.iter_chunked(READ_CHUNK) if request.body_exists else None)
    )
    try:
        async with gw.http.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=gw.settings.forward_connect_timeout),
        ) as answer:
            response = web.StreamResponse(
                status=answer.status,
                headers={k: v for k, v in answer.headers.items() if k.lower() in _ANSWERED},
            )
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            if prepared is not None:
                prepared.append(response)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
        raise GatewayError(502, unreachable, f"{what} did not answer: {e}") from None
    except aiohttp.ClientError as e:
        if request.transport is None or request.transport.is_closing():
            raise asyncio.CancelledError from None  # the client left: nothing to answer
        raise GatewayError(502, failed, f"the answer of {what} broke off: {e}") from None
