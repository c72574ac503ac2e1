"""The gateway's Function watch over real HTTP: a paged LIST once, then WATCHes that continue from
the last version (bookmarks included) instead of relisting; 410 Gone and a silent (dead) connection
relist, and deletions meanwhile are noticed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apifake import ScriptedApiserver, scripted_apiserver
from bgtask import background
from voltgrid.api import constants
from voltgrid.gateway.catalog_watch import FunctionWatcher
from voltgrid.gateway.functions import FunctionCatalog
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.registry.kubeapi import LIST_PAGE_SIZE, WATCH_SILENCE_SLACK_S, WATCH_TIMEOUT_S, KubeApi

NS = "default"
#: Seconds (of the loop's virtual time) a test waits for the watcher's requests.
WAIT_S = 30.0

Json = dict[str, Any]


def function(name: str, version: str) -> Json:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "Function",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": version},
        "spec": {"image": "local/echo:1"},
    }


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[ScriptedApiserver, KubeApi]]:
    async with scripted_apiserver(f"/apis/{constants.API_VERSION}/namespaces/{NS}/functions") as served:
        yield served


def keys(catalog: FunctionCatalog) -> set[str]:
    return {entry.key for entry in catalog}


@pytest.mark.looptime
async def test_lists_once_in_pages_then_rewatches_from_the_last_version(
    apiserver: tuple[ScriptedApiserver, KubeApi],
) -> None:
    fake, api = apiserver
    fake.pages = [
        {"metadata": {"continue": "page-2"}, "items": [function("a", "5")]},
        {"metadata": {"resourceVersion": "10"}, "items": [function("b", "6")]},
    ]
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}
    fake.streams = [
        [{"type": "ADDED", "object": function("c", "11")}, bookmark],
        [{"type": "DELETED", "object": function("a", "16")}],
    ]
    catalog = FunctionCatalog(GatewaySettings())
    async with background(FunctionWatcher(api, catalog, NS).run()):
        await fake.watches_began(3, WAIT_S)
        assert keys(catalog) == {"default/b", "default/c"}
    assert [q.get("continue") for q in fake.lists] == [None, "page-2"]  # two pages, and no relist
    assert all(q["limit"] == str(LIST_PAGE_SIZE) for q in fake.lists)
    assert [q["resourceVersion"] for q in fake.watches] == ["10", "15", "16"]
    assert all(q["allowWatchBookmarks"].lower() == "true" for q in fake.watches)


@pytest.mark.looptime
async def test_an_expired_watch_relists_and_notices_deletions(
    apiserver: tuple[ScriptedApiserver, KubeApi],
) -> None:
    fake, api = apiserver
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    fake.pages = [
        {"metadata": {"resourceVersion": "10"}, "items": [function("a", "5"), function("b", "6")]},
        {"metadata": {"resourceVersion": "30"}, "items": [function("b", "6")]},
    ]
    fake.streams = [[{"type": "ERROR", "object": gone}]]
    catalog = FunctionCatalog(GatewaySettings())
    async with background(FunctionWatcher(api, catalog, NS).run()):
        await fake.watches_began(2, WAIT_S)
        assert keys(catalog) == {"default/b"}  # a was deleted while the watch was gone
    assert [q["resourceVersion"] for q in fake.watches] == ["10", "30"]


@pytest.mark.looptime
async def test_a_silent_watch_counts_as_dead_and_relists(
    apiserver: tuple[ScriptedApiserver, KubeApi],
) -> None:
    """A connection dropped without a FIN never ends: past the watch's own timeout it is given up."""
    fake, api = apiserver
    fake.pages = [{"metadata": {"resourceVersion": "10"}, "items": [function("a", "5")]}] * 2
    catalog = FunctionCatalog(GatewaySettings())
    loop = asyncio.get_running_loop()
    async with background(FunctionWatcher(api, catalog, NS).run()):
        await fake.watches_began(1, WAIT_S)
        began = loop.time()
        await fake.watches_began(1, WATCH_TIMEOUT_S * 2)
    assert loop.time() - began >= WATCH_TIMEOUT_S + WATCH_SILENCE_SLACK_S
    assert len(fake.lists) == 2
