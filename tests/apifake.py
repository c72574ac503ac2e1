"""A scripted apiserver over real HTTP, for the access layer's LIST+WATCH loop and its users.

kmock emulates objects but not the shape of a WATCH in time (a server-side end, a silent dead
connection, bookmarks, 410 Gone); these tests need exactly that, against the real client.
Each LIST answers the next scripted page; each WATCH streams the next scripted events and then ends
(the server's timeout), or, past the script, stays open and silent. A scripted page or stream that
is an HTTP status (an int) is answered with that status and a Kubernetes ``Status`` body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from voltgrid.registry.kubeapi import KubeApi, StaticCredentials

Json = dict[str, Any]


class ScriptedApiserver:
    """LIST pages and WATCH streams from scripts; records every request's query."""

    def __init__(self) -> None:
        self.lists: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []
        self.watch_began: asyncio.Queue[None] = asyncio.Queue()
        self.pages: list[Json | int] = []
        #: One list of events (or a refusal's status) per WATCH, in order.
        self.streams: list[list[Json] | int] = []
        #: The Authorization header of every request, in order.
        self.authorizations: list[str | None] = []
        #: The base URL it serves on.
        self.url = ""
        #: The bodies POSTed to the collection, and the names DELETEd from it.
        self.created: list[Json] = []
        self.deleted: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.authorizations.append(request.headers.get("Authorization"))
        if query.get("watch") != "true":
            self.lists.append(query)
            page = self.pages[len(self.lists) - 1]
            return refusal(page) if isinstance(page, int) else web.json_response(page)
        self.watches.append(query)
        self.watch_began.put_nowait(None)
        index = len(self.watches) - 1
        stream = self.streams[index] if index < len(self.streams) else None
        if isinstance(stream, int):
            return refusal(stream)
        response = web.StreamResponse()
        await response.prepare(request)
        if stream is None:
            await asyncio.Event().wait()  # open and silent until the client goes away
        for event in stream or []:
            await response.write(json.dumps(event).encode() + b"\n")
        return response

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.created.append(body)
        return web.json_response(body, status=201)

    async def delete(self, request: web.Request) -> web.Response:
        self.deleted.append(request.match_info["name"])
        return web.json_response({"kind": "Status", "status": "Success"})

    async def watches_began(self, count: int, within: float) -> None:
        async with asyncio.timeout(within):
            for _ in range(count):
                await self.watch_began.get()


def refusal(status: int) -> web.Response:
    """The apiserver's answer to a refused request: a ``Status`` object with that code."""
    body = {"kind": "Status", "status": "Failure", "code": status, "reason": f"Code{status}", "message": "scripted"}
    return web.json_response(body, status=status)


@asynccontextmanager
async def scripted_apiserver(path: str, token: str | None = None) -> AsyncIterator[tuple[ScriptedApiserver, KubeApi]]:
    """The fake serving ``path`` (a collection URL) on loopback, and a client configured for it."""
    fake = ScriptedApiserver()
    app = web.Application()
    app.router.add_get(path, fake.handle)
    app.router.add_post(path, fake.create)
    app.router.add_delete(path + "/{name}", fake.delete)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    api = KubeApi(StaticCredentials(fake.url, token))
    try:
        yield fake, api
    finally:
        await api.close()
        await server.close()
