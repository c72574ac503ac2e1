"""The gateway's Function watch over real HTTP: a paged LIST once, then WATCHes that continue from
the last version (bookmarks included) instead of relisting; 410 Gone relists and notices deletions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio import client

from voltgrid.api import constants as c
from voltgrid.gateway.catalog_watch import LIST_PAGE_SIZE, FunctionWatcher
from voltgrid.gateway.functions import FunctionCatalog
from voltgrid.gateway.settings import GatewaySettings

NS = "default"
PATH = f"/apis/{c.API_VERSION}/namespaces/{NS}/functions"

#: Seconds (of the loop's virtual time) a test waits for the watcher's requests.
WAIT_S = 30.0

Json = dict[str, Any]


def function(name: str, version: str) -> Json:
    return {
        "apiVersion": c.API_VERSION,
        "kind": "Function",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": version},
        "spec": {"image": "local/echo:1"},
    }


class FakeApiserver:
    """LIST pages and WATCH streams from scripts; records every request's query."""

    def __init__(self) -> None:
        self.lists: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []
        self.watch_began: asyncio.Queue[None] = asyncio.Queue()
        self.pages: list[Json] = []
        #: One list of events per WATCH, in order; a WATCH beyond the script stays open (no events).
        self.streams: list[list[Json]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if query.get("watch", "").lower() != "true":  # kubernetes_asyncio sends "True"
            self.lists.append(query)
            return web.json_response(self.pages[len(self.lists) - 1])
        self.watches.append(query)
        self.watch_began.put_nowait(None)
        response = web.StreamResponse()
        await response.prepare(request)
        index = len(self.watches) - 1
        if index >= len(self.streams):
            await asyncio.Event().wait()  # open until the client goes away
        for event in self.streams[index]:
            await response.write(json.dumps(event).encode() + b"\n")
        return response  # the server ends the WATCH (its timeout)


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[FakeApiserver, client.ApiClient]]:
    fake = FakeApiserver()
    app = web.Application()
    app.router.add_get(PATH, fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    config = client.Configuration(host=str(server.make_url("")).rstrip("/"))
    api = client.ApiClient(config)
    yield fake, api
    await api.close()
    await server.close()


async def watches_began(fake: FakeApiserver, count: int) -> None:
    async with asyncio.timeout(WAIT_S):
        for _ in range(count):
            await fake.watch_began.get()


@pytest.mark.looptime
async def test_lists_once_in_pages_then_rewatches_from_the_last_version(
    apiserver: tuple[FakeApiserver, client.ApiClient],
) -> None:
    fake, api = apiserver
    fake.pages = [
        {"metadata": {"continue": "page-2"}, "items": [function("a", "5")]},
        {"metadata": {"resourceVersion": "10"}, "items": [function("b", "6")]},
    ]
    fake.streams = [
        [
            {"type": "ADDED", "object": function("c", "11")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
        ],
        [{"type": "DELETED", "object": function("a", "16")}],
    ]
    catalog = FunctionCatalog(GatewaySettings())
    watcher = FunctionWatcher(api, catalog, NS)
    task = asyncio.create_task(watcher.run())
    try:
        await watches_began(fake, 3)
        assert {entry.key for entry in catalog} == {"default/b", "default/c"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [q.get("continue") for q in fake.lists] == [None, "page-2"]  # two pages, and no relist
    assert all(q["limit"] == str(LIST_PAGE_SIZE) for q in fake.lists)
    assert [q["resourceVersion"] for q in fake.watches] == ["10", "15", "16"]
    assert all(q["allowWatchBookmarks"].lower() == "true" for q in fake.watches)


@pytest.mark.looptime
async def test_an_expired_watch_relists_and_notices_deletions(
    apiserver: tuple[FakeApiserver, client.ApiClient],
) -> None:
    fake, api = apiserver
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    fake.pages = [
        {"metadata": {"resourceVersion": "10"}, "items": [function("a", "5"), function("b", "6")]},
        {"metadata": {"resourceVersion": "30"}, "items": [function("b", "6")]},
    ]
    fake.streams = [[{"type": "ERROR", "object": gone}]]
    catalog = FunctionCatalog(GatewaySettings())
    watcher = FunctionWatcher(api, catalog, NS)
    task = asyncio.create_task(watcher.run())
    try:
        await watches_began(fake, 2)
        assert {entry.key for entry in catalog} == {"default/b"}  # a was deleted while the watch was gone
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [q["resourceVersion"] for q in fake.watches] == ["10", "30"]
