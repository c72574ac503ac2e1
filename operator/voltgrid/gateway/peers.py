"""Internal calls between gateway replicas: hand-off, backups, heartbeats, budgets, listing.

These carry the shared ``internal_token``; nothing here touches the apiserver. A binding learned
on one replica (an MCP session id minted by an instance) is handed to the owner of that id, which
keeps a passive backup on its runner-up; a long stream held open on a non-owner touches the owner
so the session is not idled; a session ended on a non-owner is ended by its owner; instance budgets
are asked of the Function's budget owner (:mod:`voltgrid.gateway.budget`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import aiohttp

from voltgrid.gateway.errors import GatewayError
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

    async def push_bindings(self, peer: str, items: list[dict[str, Any]]) -> bool:
        return await self._post(peer, "/bindings", {"items": items})

    async def end(self, peer: str, function: str, key: str, reason: str) -> bool:
        return await self._post(peer, "/end", {"function": function, "key": key, "reason": reason})

    async def budget(self, peer: str, op: str, payload: dict[str, Any], seconds: float) -> dict[str, Any]:
        """The budget owner's answer to ``op``; an error answer is returned as
        ``{"status", "error", "headers"}``; ConnectionError when the owner cannot be reached."""
        try:
            async with (
                asyncio.timeout(seconds),
                self._http.post(f"{peer}{INTERNAL_PREFIX}/budget/{op}", json=payload, headers=self._headers) as resp,
            ):
                body = await resp.json(content_type=None)
                if not isinstance(body, dict):
                    raise ValueError("the answer is not a JSON object")
                if resp.status >= 300:
                    retry = resp.headers.get("Retry-After")
                    return {
                        "status": resp.status,
                        "error": body["error"],
                        "headers": {"Retry-After": retry} if retry else {},
                    }
                return body
        except TimeoutError:
            raise GatewayError(
                504, "cold_start_timeout", f"the budget owner {peer} did not answer in {seconds}s"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as e:
            logger.warning("budget call %s to %s failed: %s", op, peer, e)
            raise ConnectionError(str(e)) from e

    async def seats(self, function: str) -> dict[str, int]:
        """Seats by instance of ``function`` held on every other replica (for a budget rebuild)."""

        async def one(peer: str) -> dict[str, int]:
            try:
                async with (
                    asyncio.timeout(INTERNAL_TIMEOUT),
                    self._http.get(
                        f"{peer}{INTERNAL_PREFIX}/budget/seats", params={"function": function}, headers=self._headers
                    ) as resp,
                ):
                    body = await resp.json(content_type=None) if resp.status == 200 else {}
                    seats = body.get("seats", {}) if isinstance(body, dict) else {}
                    return {str(k): int(v) for k, v in seats.items()}
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, TypeError, AttributeError) as e:
                logger.warning("asking %s for seats failed: %s", peer, e)
                return {}

        total: dict[str, int] = {}
        for seats in await asyncio.gather(*(one(p) for p in self._membership.peers())):
            for instance_id, n in seats.items():
                total[instance_id] = total.get(instance_id, 0) + n
        return total

    async def a2a_context(self, function: str, task_id: str) -> str | None:
        """The context of A2A task ``task_id`` as another replica learned it (all asked at once)."""

        async def one(peer: str) -> str | None:
            try:
                async with (
                    asyncio.timeout(INTERNAL_TIMEOUT),
                    self._http.get(
                        f"{peer}{INTERNAL_PREFIX}/a2a/task",
                        params={"function": function, "task": task_id},
                        headers=self._headers,
                    ) as resp,
                ):
                    body = await resp.json(content_type=None) if resp.status == 200 else {}
                    context = body.get("context") if isinstance(body, dict) else None
                    return context if isinstance(context, str) else None
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                logger.warning("asking %s for an A2A task failed: %s", peer, e)
                return None

        found = await asyncio.gather(*(one(p) for p in self._membership.peers()))
        return next((context for context in found if context), None)

    async def touch(self, peer: str, function: str, key: str) -> bool:
        return await self._post(peer, "/touch", {"function": function, "key": key})

    async def list_sessions(self, function: str, principal: str | None) -> list[dict[str, Any]]:
        """Sessions of ``function`` owned by the other replicas (each asked once, in parallel), only
        those of ``principal`` unless it is None."""
        params = {"function": function} if principal is None else {"function": function, "principal": principal}

        async def one(peer: str) -> list[dict[str, Any]]:
            try:
                async with (
                    asyncio.timeout(INTERNAL_TIMEOUT),
                    self._http.get(f"{peer}{INTERNAL_PREFIX}/sessions", params=params, headers=self._headers) as resp,
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
