"""WebSocket relay: one upgrade to the client, one to the upstream, frames pumped both ways.

Text, binary, ping/pong (handled by aiohttp's heartbeat machinery) and close codes pass through;
the connection counts as one request in flight for its whole life, bounded by the maximum stream
duration.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict, istr

from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.proxy import Traffic

#: Handshake headers aiohttp's client sets itself (copying them would break the upgrade).
_HANDSHAKE: Final = frozenset(
    istr(h)
    for h in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Content-Length",
    )
)
#: Close code sent to the client when the upstream fails or the stream limit is reached.
CLOSE_GOING_AWAY: Final = 1001


def is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket" and request.method == "GET"


async def relay_websocket(
    http: aiohttp.ClientSession,
    request: web.Request,
    url: str,
    headers: CIMultiDict[str],
    traffic: Traffic,
    *,
    header_timeout: float,
    max_stream: float,
) -> web.WebSocketResponse:
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    for name in _HANDSHAKE:
        headers.popall(name, None)
    try:
        async with asyncio.timeout(header_timeout):
            upstream = await http.ws_connect(url, headers=headers, protocols=protocols, autoping=True)
    except TimeoutError:
        raise GatewayError(504, "upstream_timeout", "the instance did not accept the WebSocket in time") from None
    except aiohttp.WSServerHandshakeError as e:
        raise GatewayError(502, "upstream_refused", f"the instance refused the WebSocket ({e.status})") from None
    except (aiohttp.ClientError, OSError) as e:
        raise GatewayError(502, "upstream_unavailable", f"cannot reach the instance: {type(e).__name__}") from None
    client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), autoping=True)
    traffic.status = 101
    try:
        await client.prepare(request)

        async def pump(
            source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
            sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
            inbound: bool,
        ) -> None:
            async for msg in source:
                size = len(msg.data) if isinstance(msg.data, (bytes, str)) else 0
                if inbound:
                    traffic.bytes_in += size
                else:
                    traffic.bytes_out += size
                if msg.type == WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await sink.send_bytes(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
            await sink.close(code=source.close_code or CLOSE_GOING_AWAY)

        tasks = [
            asyncio.ensure_future(pump(client, upstream, True)),
            asyncio.ensure_future(pump(upstream, client, False)),
        ]
        try:
            async with asyncio.timeout(max_stream):
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    finally:
        await upstream.close()
        if not client.closed:
            await client.close(code=CLOSE_GOING_AWAY)
    return client
