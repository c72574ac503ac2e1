"""A new session while the control plane is down: held in the cold-start queue, then 503 + Retry-After.

The Kubernetes backend is pointed at a closed loopback port (what a stopped apiserver looks like
to a client); the gateway-level behaviour is also checked with a backend whose outage ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from gwhelpers import FakeBackend, function
from kubernetes_asyncio import client

from ports import free_port
from voltgrid.api.function import Function
from voltgrid.backends.base import ControlPlaneUnavailableError, Instance
from voltgrid.backends.kubernetes import KubernetesBackend


def cluster_function() -> Function:
    """A Function as the apiserver returns it (with a uid), runnable without a sandboxed runtime."""
    fn = function("echo")
    fn.metadata.uid = "0e3c3d1e-5b7a-4c1e-9a59-6a1f2b3c4d5e"
    fn.spec.isolation.allow_unsandboxed = True
    return fn


@pytest.fixture
async def unreachable() -> AsyncIterator[KubernetesBackend]:
    """The real Kubernetes backend, its apiserver a loopback port nobody listens on."""
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{free_port()}"
    backend = KubernetesBackend(client.ApiClient(config), ready_timeout=5)
    yield backend
    await backend.close()


async def test_the_kubernetes_backend_names_an_unreachable_apiserver(unreachable: KubernetesBackend) -> None:
    with pytest.raises(ControlPlaneUnavailableError, match="cannot reach the apiserver"):
        await unreachable.list("default/echo", session="abc")
    with pytest.raises(ControlPlaneUnavailableError):
        await unreachable.create(cluster_function(), "abc")
    instance = Instance(id="echo-abc", function="default/echo", url="http://127.0.0.1:1", session="abc")
    with pytest.raises(ControlPlaneUnavailableError):
        await unreachable.delete(instance)
    with pytest.raises(ControlPlaneUnavailableError):
        await unreachable.checkpoint(instance, time.time())


async def test_a_new_session_without_an_apiserver_waits_then_gets_503(replicas, unreachable: KubernetesBackend) -> None:
    (gw,) = await replicas([cluster_function()], backend=unreachable, cold_start_timeout=1.0, retry_after=7)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.get(f"{gw.url}/fn/default/echo/x") as r:
            body = await r.json()
            assert (r.status, r.headers.get("Retry-After")) == (503, "7"), body
        waited = time.monotonic() - started
    assert body["error"]["code"] == "control_plane_unavailable"
    assert 0.5 < waited < 1.5  # held in the queue, bounded by the cold-start timeout


class OutageBackend(FakeBackend):
    """A backend whose control plane is down until ``restored`` is set."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.restored = asyncio.Event()
        self.refused = 0

    def _check(self) -> None:
        if not self.restored.is_set():
            self.refused += 1
            raise ControlPlaneUnavailableError("cannot reach the apiserver to list instance pods: ClientConnectorError")

    async def create(self, fn: Function, session_id: str, *, warm: bool = False) -> Instance:
        self._check()
        return await super().create(fn, session_id, warm=warm)

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        self._check()
        return await super().list(function, session)


async def test_a_new_session_is_served_once_the_control_plane_answers(replicas, upstream: str) -> None:
    backend = OutageBackend(upstream)
    (gw,) = await replicas([function("echo")], backend=backend, cold_start_timeout=10.0)
    loop = asyncio.get_running_loop()
    loop.call_later(0.8, backend.restored.set)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.get(f"{gw.url}/fn/default/echo/x") as r:
            assert r.status == 200
        assert 0.7 < time.monotonic() - started < 5
    assert backend.refused >= 2 and len(backend.created) == 1
