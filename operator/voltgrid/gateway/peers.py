"""Internal calls between gateway replicas: binding hand-off, stream heartbeats, session listing.

These carry the shared ``internal_token``; nothing here touches the apiserver. A binding learned
on one replica (an MCP session id minted by an instance) is pushed to the owner and the backup of
that id; a long stream held open on a non-owner touches the owner so the session is not idled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import aiohttp

from voltgrid.registry.ownership import Membership

logger = logging.getLogger(__name__)

#: Marks a request forwarded by a replica (value: the internal token); it is never forwarded again.
FORWARDED_HEADER: Final = "X-Voltgrid-Forwarded"
INTERNAL_TOKEN_HEADER: Final = "X-Voltgrid-Internal-Token"
INTERNAL_PREFIX: Final = "/_voltgrid/internal/v1"
#: Seconds an internal call may take.
INTERNAL_TIMEOUT: Final = 3.0


class Peers:
    def __init__(self, http: aiohttp.ClientSession, membership: Membership, token: str) -> None:
        self._http = http
        self._membership = membership
        self._headers = {INTERNAL_TOKEN_HEADER: token}

    async def _post(self, peer: str, path: str, payload: dict[str, Any]) -> bool:
        try:
            async with (
                asyncio.timeout(INTERNAL_TIMEOUT),
                self._http.post(f"{peer}{INTERNAL_PREFIX}{path}", json=payload, headers=self._headers) as resp,
            ):
                await resp.read()
                return resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            logger.warning("internal call %s to %s failed: %s", path, peer, e)
            self._membership.suspect(peer)
            return False

    async def push_binding(self, peer: str, payload: dict[str, Any]) -> bool:
        return await self._post(peer, "/bindings", payload)

    async def touch(self, peer: str, key: str) -> bool:
        return await self._post(peer, "/touch", {"key": key})

    async def list_sessions(self, function: str) -> list[dict[str, Any]]:
        """Sessions of ``function`` owned by the other replicas (each asked once, in parallel)."""

        async def one(peer: str) -> list[dict[str, Any]]:
            try:
                async with (
                    asyncio.timeout(INTERNAL_TIMEOUT),
                    self._http.get(
                        f"{peer}{INTERNAL_PREFIX}/sessions", params={"function": function}, headers=self._headers
                    ) as resp,
                ):
                    if resp.status != 200:
                        return []
                    body = await resp.json()
                    items: list[dict[str, Any]] = body.get("items", [])
                    return items
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                logger.warning("listing sessions on %s failed: %s", peer, e)
                return []

        results = await asyncio.gather(*(one(p) for p in self._membership.peers()))
        return [item for items in results for item in items]
