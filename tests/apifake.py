"""A scripted apiserver over real HTTP, for the access layer's LIST+WATCH loop and its users.

kmock emulates objects but not the shape of a WATCH in time (a server-side end, a silent dead
connection, bookmarks, 410 Gone); these tests need exactly that, against the real client.
Each LIST answers the next scripted page; each WATCH streams the next scripted events and then ends
(the server's timeout), or, past the script, stays open and silent.
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
        self.pages: list[Json] = []
        #: One list of events per WATCH, in order.
        self.streams: list[list[Json]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if query.get("watch") != "true":
            self.lists.append(query)
            return web.json_response(self.pages[len(self.lists) - 1])
        self.watches.append(query)
        self.watch_began.put_nowait(None)
        response = web.StreamResponse()
        await response.prepare(request)
        index = len(self.watches) - 1
        if index >= len(self.streams):
            await asyncio.Event().wait()  # open and silent until the client goes away
        for event in self.streams[index]:
            await response.write(json.dumps(event).encode() + b"\n")
        return response

    async def watches_began(self, count: int, within: float) -> None:
        async with asyncio.timeout(within):
            for _ in range(count):
                await self.watch_began.get()


@asynccontextmanager
async def scripted_apiserver(path: str) -> AsyncIterator[tuple[ScriptedApiserver, KubeApi]]:
    """The fake serving ``path`` (a collection URL) on loopback, and a client configured for it."""
    fake = ScriptedApiserver()
    app = web.Application()
    app.router.add_get(path, fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api = KubeApi(StaticCredentials(str(server.make_url("")).rstrip("/")))
    try:
        yield fake, api
    finally:
        await api.close()
        await server.close()
