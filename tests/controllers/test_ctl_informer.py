"""The Function informer against kmock: LIST, WATCH, deletions across a relist, scope, slimming."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import kopf
import pytest
from ctlfakes import FUNCTIONS, NS, eventually, function

from bgtask import background
from voltgrid.controllers.informer import LAST_APPLIED, Informer, slim
from voltgrid.controllers.kube import KopfCredentials, KubeClient, voltgrid_path
from voltgrid.controllers.settings import OperatorSettings, matches_namespace

Json = dict[str, Any]


class Seen:
    """The handler: the latest (event type, body) per name, and every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []
        self.latest: dict[str, tuple[str | None, Json]] = {}

    async def __call__(self, body: Json, event_type: str | None) -> None:
        name = body["metadata"]["name"]
        self.calls.append((event_type, name))
        self.latest[name] = (event_type, body)


def informer(api: kmock.KubernetesEmulator, seen: Seen, paths: list[str], served: Any = None) -> Informer:
    client = KubeClient(kopf.ConnectionInfo(server=str(api.url)))
    gate = asyncio.Event()
    gate.set()
    return Informer(
        client,
        paths,
        seen,
        served=served or (lambda ns: True),
        gate=gate,
        workers=4,
        max_pending=100,
        name="functions",
    )


@pytest.fixture
async def client_closer() -> Any:
    clients: list[KubeClient] = []
    yield clients
    for client in clients:
        await client.close()


async def test_lists_then_watches_and_hears_of_deletions(api: kmock.KubernetesEmulator, client_closer: Any) -> None:
    api.objects[FUNCTIONS, NS, "a"] = function("a")
    seen = Seen()
    inf = informer(api, seen, [voltgrid_path("functions", NS)])
    client_closer.append(inf._client)
    async with background(inf.run()):
        await asyncio.wait_for(inf.synced.wait(), 5)
        await eventually(lambda: "a" in seen.latest)
        api.objects[FUNCTIONS, NS, "b"] = function("b")  # stored directly: no watch event for it
        await inf._client.create(voltgrid_path("functions", NS), function("c"))
        await eventually(lambda: "c" in seen.latest)
        await inf._client.delete(voltgrid_path("functions", NS, "a"))
        await eventually(lambda: seen.latest["a"][0] == "DELETED")
        # A relist (e.g. after a 410) picks up what the watch missed, and what is gone meanwhile.
        del api.objects[FUNCTIONS, NS, "c"]
        inf.resync()
        await eventually(lambda: "b" in seen.latest and seen.latest["c"][0] == "DELETED")


async def test_objects_outside_the_served_namespaces_are_ignored(
    api: kmock.KubernetesEmulator, client_closer: Any
) -> None:
    api.objects[FUNCTIONS, NS, "mine"] = function("mine")
    theirs = function("theirs")
    theirs["metadata"]["namespace"] = "kube-system"
    api.objects[FUNCTIONS, "kube-system", "theirs"] = theirs
    seen = Seen()
    settings = OperatorSettings(namespaces=("team-*",))
    inf = informer(api, seen, [voltgrid_path("functions")], served=settings.serves)
    client_closer.append(inf._client)
    async with background(inf.run()):
        await asyncio.wait_for(inf.synced.wait(), 5)
        await asyncio.wait_for(inf.queue.join(), 5)
    assert set(seen.latest) == {"mine"}


def test_slim_drops_managed_fields_and_the_last_applied_copy() -> None:
    body = {
        **function("a"),
        "metadata": {
            "name": "a",
            "namespace": NS,
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {LAST_APPLIED: "{...}", "team": "x"},
        },
    }
    slimmed = slim(body)
    assert slimmed["metadata"] == {"name": "a", "namespace": NS, "annotations": {"team": "x"}}
    assert slimmed["spec"] == body["spec"]
    assert body["metadata"]["managedFields"]  # the original is untouched


@pytest.mark.parametrize(
    ("namespace", "pattern", "served"),
    [
        ("team-a", "team-a", True),
        ("team-b", "team-a", False),
        ("team-b", "team-*", True),
        ("kube-system", "!kube-*", False),
        ("default", "!kube-*", True),
        ("myapp-pr-123", "myapp-*, !*-pr-*, *pr-123", True),
        ("myapp-pr-456", "myapp-*, !*-pr-*, *pr-123", False),
        ("otherapp-pr-123", "myapp-*, !*-pr-*, *pr-123", False),
    ],
)
def test_namespace_patterns_follow_kopf(namespace: str, pattern: str, served: bool) -> None:
    assert matches_namespace(namespace, pattern) is served
    assert OperatorSettings(namespaces=(pattern,)).serves(namespace) is served


@pytest.mark.parametrize(
    ("server", "insecure", "verified"),
    [("http://127.0.0.1:8001", False, True), ("https://10.96.0.1", True, False)],
)
async def test_kopfs_login_is_the_access_layers_credentials(server: str, insecure: bool, verified: bool) -> None:
    credentials = KopfCredentials(kopf.ConnectionInfo(server=server, token="t0k", insecure=insecure))
    assert credentials.server == server
    assert await credentials.headers() == {"Authorization": "Bearer t0k"}
    assert credentials.ssl_context() is verified
