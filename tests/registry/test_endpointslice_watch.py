"""Membership from the gateway Service's EndpointSlices over real HTTP: listed, then watched; a
replica that turns unready drops out; a silent (dead) watch connection is given up and relisted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apifake import ScriptedApiserver, scripted_apiserver
from bgtask import background
from voltgrid.registry.endpointslices import SERVICE_NAME_LABEL, EndpointSliceWatcher
from voltgrid.registry.kubeapi import WATCH_SILENCE_SLACK_S, WATCH_TIMEOUT_S, KubeApi
from voltgrid.registry.ownership import Membership

NS = "voltgrid-system"
SERVICE = "voltgrid-gateway"
SELF = "http://10.0.0.1:8080"
#: Seconds (of the loop's virtual time) a test waits for the watcher's requests.
WAIT_S = 30.0

Json = dict[str, Any]


def endpoint_slice(name: str, version: str, **ready: bool) -> Json:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": version,
            "labels": {SERVICE_NAME_LABEL: SERVICE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": up}} for ip, up in ready.items()],
    }


def listing(version: str, *slices: Json) -> Json:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSliceList",
        "metadata": {"resourceVersion": version},
        "items": list(slices),
    }


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[ScriptedApiserver, KubeApi]]:
    async with scripted_apiserver(f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices") as served:
        yield served


def watcher(membership: Membership, api: KubeApi) -> EndpointSliceWatcher:
    return EndpointSliceWatcher(membership, api, namespace=NS, service=SERVICE, port_name="http")


@pytest.mark.looptime
async def test_members_follow_the_ready_endpoints(apiserver: tuple[ScriptedApiserver, KubeApi]) -> None:
    fake, api = apiserver
    first = endpoint_slice("gw-1", "5", **{"10.0.0.1": True, "10.0.0.2": True})
    fake.pages = [listing("10", first)]
    unready = endpoint_slice("gw-1", "11", **{"10.0.0.1": True, "10.0.0.2": False, "10.0.0.3": True})
    fake.streams = [[{"type": "MODIFIED", "object": unready}]]
    membership = Membership(SELF)
    async with background(watcher(membership, api).run()):
        await fake.watches_began(1, WAIT_S)
        await asyncio.sleep(1)
        assert membership.members == (SELF, "http://10.0.0.3:8080")
    assert fake.lists[0]["labelSelector"] == f"{SERVICE_NAME_LABEL}={SERVICE}"
    assert fake.watches[0]["resourceVersion"] == "10"


@pytest.mark.looptime
async def test_a_silent_watch_counts_as_dead_and_relists(
    apiserver: tuple[ScriptedApiserver, KubeApi],
) -> None:
    """A connection dropped without a FIN never ends: past the watch's own timeout it is given up."""
    fake, api = apiserver
    fake.pages = [listing("10", endpoint_slice("gw-1", "5", **{"10.0.0.1": True}))] * 2
    loop = asyncio.get_running_loop()
    async with background(watcher(Membership(SELF), api).run()):
        await fake.watches_began(1, WAIT_S)
        began = loop.time()
        await fake.watches_began(1, WATCH_TIMEOUT_S * 2)
    assert loop.time() - began >= WATCH_TIMEOUT_S + WATCH_SILENCE_SLACK_S
    assert len(fake.lists) == 2
    assert fake.watches[0]["timeoutSeconds"] == str(WATCH_TIMEOUT_S)


@pytest.mark.looptime
async def test_a_watch_the_server_ended_resumes_from_the_last_version_with_bookmarks(
    apiserver: tuple[ScriptedApiserver, KubeApi],
) -> None:
    """No relist every few minutes: each replica lists once and then follows bookmarks."""
    fake, api = apiserver
    fake.pages = [listing("10", endpoint_slice("gw-1", "5", **{"10.0.0.1": True}))]
    fake.streams = [[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}], []]
    async with background(watcher(Membership(SELF), api).run()):
        await fake.watches_began(3, WATCH_TIMEOUT_S * 2)
    assert len(fake.lists) == 1
    assert [q["resourceVersion"] for q in fake.watches] == ["10", "15", "15"]
    assert all(q["allowWatchBookmarks"] == "true" for q in fake.watches)


@pytest.mark.looptime
async def test_an_expired_watch_relists_and_a_slice_deleted_meanwhile_drops_out(
    apiserver: tuple[ScriptedApiserver, KubeApi],
) -> None:
    fake, api = apiserver
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    one, two = endpoint_slice("gw-1", "5", **{"10.0.0.1": True}), endpoint_slice("gw-2", "6", **{"10.0.0.2": True})
    fake.pages = [listing("10", one, two), listing("30", one)]
    fake.streams = [[{"type": "ERROR", "object": gone}]]
    membership = Membership(SELF)
    async with background(watcher(membership, api).run()):
        await fake.watches_began(1, WAIT_S)
        assert membership.members == (SELF, "http://10.0.0.2:8080")
        await fake.watches_began(1, WAIT_S)
        assert membership.members == (SELF,)
    assert [q["resourceVersion"] for q in fake.watches] == ["10", "30"]
