"""The Kubernetes backend's wait for a starting pod, on the access layer's LIST+WATCH loop over real
HTTP: Ready through the watch, through a relist after 410 Gone, a pod gone meanwhile is created
again, one that ended is deleted and reported; and the paged instance LIST."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gwhelpers import function
from kubernetes_asyncio import client

from apifake import ScriptedApiserver, scripted_apiserver
from voltgrid.api import constants
from voltgrid.api.function import Function
from voltgrid.backends.base import ControlPlaneUnavailableError, InstanceStartError
from voltgrid.backends.kubernetes import KubernetesBackend
from voltgrid.registry.kubeapi import LIST_PAGE_SIZE, WATCH_SILENCE_SLACK_S, WATCH_TIMEOUT_S

NS = "default"
POD = "echo-abc"
#: Long enough for a silent watch to be given up and relisted (virtual time).
READY_TIMEOUT_S = 2 * (WATCH_TIMEOUT_S + WATCH_SILENCE_SLACK_S)

Json = dict[str, Any]


def cluster_function() -> Function:
    fn = function("echo")
    fn.metadata.uid = "0e3c3d1e-5b7a-4c1e-9a59-6a1f2b3c4d5e"
    fn.spec.isolation.allow_unsandboxed = True
    return fn


def pod(version: str, *, ready: bool = False, phase: str = "Pending", ip: str = "10.1.0.7") -> Json:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "metadata": {
            "name": POD,
            "namespace": NS,
            "resourceVersion": version,
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "labels": {constants.LABEL_FUNCTION: "echo", constants.LABEL_SESSION: "abc"},
        },
        "spec": {"containers": [{"name": "fn", "ports": [{"containerPort": 9000}]}]},
        "status": {"phase": phase, "podIP": ip, "conditions": conditions},
    }


def pods(version: str, *items: Json) -> Json:
    return {"metadata": {"resourceVersion": version}, "items": list(items)}


GONE = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[ScriptedApiserver, KubernetesBackend]]:
    async with scripted_apiserver(f"/api/v1/namespaces/{NS}/pods") as (fake, api):
        writes = client.ApiClient(client.Configuration(host=fake.url))
        backend = KubernetesBackend(writes, kube=api, ready_timeout=READY_TIMEOUT_S)
        try:
            yield fake, backend
        finally:
            await backend.close()


CASES = {
    "ready through the watch": ([pods("10", pod("9"))], [[{"type": "MODIFIED", "object": pod("11", ready=True)}]], 1),
    "ready found by the relist after 410 Gone": (
        [pods("10", pod("9")), pods("30", pod("29", ready=True))],
        [[GONE]],
        1,
    ),
    "a pod gone (it was terminating) is created again": (
        [pods("10"), pods("20", pod("19", ready=True))],
        [],
        2,
    ),
    "a pod deleted during the watch is created again": (
        [pods("10", pod("9")), pods("20", pod("21", ready=True))],
        [[{"type": "DELETED", "object": pod("12")}]],
        2,
    ),
}


@pytest.mark.looptime
@pytest.mark.parametrize(("pages", "streams", "creates"), CASES.values(), ids=CASES.keys())
async def test_create_waits_until_the_pod_is_ready(
    apiserver: tuple[ScriptedApiserver, KubernetesBackend], pages: list[Json], streams: list[list[Json]], creates: int
) -> None:
    fake, backend = apiserver
    fake.pages, fake.streams = list(pages), list(streams)
    instance = await backend.create(cluster_function(), "abc")
    assert (instance.id, instance.url, instance.session) == (POD, "http://10.1.0.7:8080", "abc")
    assert all(q["fieldSelector"] == f"metadata.name={POD}" for q in fake.lists + fake.watches)
    assert [q["resourceVersion"] for q in fake.watches][:1] in ([], ["10"])
    assert fake.deleted == []
    assert len(fake.created) == creates


@pytest.mark.looptime
async def test_a_silent_pod_watch_is_given_up_and_relisted(
    apiserver: tuple[ScriptedApiserver, KubernetesBackend],
) -> None:
    """A watch connection dropped without a FIN: the pod became Ready meanwhile, the relist finds it."""
    fake, backend = apiserver
    fake.pages = [pods("10", pod("9")), pods("20", pod("19", ready=True))]
    loop = asyncio.get_running_loop()
    began = loop.time()
    instance = await backend.create(cluster_function(), "abc")
    assert instance.id == POD
    assert loop.time() - began >= WATCH_TIMEOUT_S + WATCH_SILENCE_SLACK_S
    assert len(fake.lists) == 2


@pytest.mark.looptime
async def test_a_pod_that_ended_before_ready_is_deleted_and_reported(
    apiserver: tuple[ScriptedApiserver, KubernetesBackend],
) -> None:
    fake, backend = apiserver
    fake.pages = [pods("10", pod("9"))]
    fake.streams = [[{"type": "MODIFIED", "object": pod("11", phase="Failed")}]]
    with pytest.raises(InstanceStartError, match="ended \\(Failed\\) before ready"):
        await backend.create(cluster_function(), "abc")
    assert fake.deleted == [POD]


@pytest.mark.looptime
async def test_an_apiserver_lost_while_waiting_is_a_control_plane_outage(
    apiserver: tuple[ScriptedApiserver, KubernetesBackend],
) -> None:
    fake, backend = apiserver
    fake.pages = [503] * 100
    with pytest.raises(ControlPlaneUnavailableError, match="lost the apiserver"):
        await backend.create(cluster_function(), "abc")
    assert fake.deleted == [POD]  # the pod it created does not outlive the failed start


async def test_list_returns_the_ready_instances_of_a_paged_list(
    apiserver: tuple[ScriptedApiserver, KubernetesBackend],
) -> None:
    fake, backend = apiserver
    other = pod("8", ready=True, ip="10.1.0.8")
    other["metadata"]["name"] = "echo-def"
    fake.pages = [
        {"metadata": {"continue": "p2"}, "items": [pod("7", ready=True)]},
        pods("10", other, {**pod("9"), "metadata": {**pod("9")["metadata"], "name": "echo-ghi"}}),
    ]
    found = await backend.list("default/echo")
    assert [(i.id, i.url, i.created > 0) for i in found] == [
        (POD, "http://10.1.0.7:9000", True),
        ("echo-def", "http://10.1.0.8:9000", True),
    ]
    assert [q.get("continue") for q in fake.lists] == [None, "p2"]
    assert all(q["limit"] == str(LIST_PAGE_SIZE) for q in fake.lists)
    assert fake.lists[0]["labelSelector"].endswith(f"{constants.LABEL_FUNCTION}=echo")
