"""Peering: only the active replica works on Functions; a standby takes over when the peer is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kopf
import pytest
from ctlfakes import EPOCH, FUNCTIONS, NS, add_node, eventually, function, stored, virtual_now

from bgtask import background
from voltgrid.controllers.core import PEERING_CHECK_S, Controllers
from voltgrid.controllers.main import build_controllers
from voltgrid.controllers.settings import OperatorSettings

PEERINGS = "kopf.dev/v1/kopfpeerings"
LIFETIME_S = 60


def peer(priority: int) -> dict[str, Any]:
    return {"priority": priority, "lastseen": EPOCH.isoformat(), "lifetime": LIFETIME_S}


@pytest.fixture
async def replica(api: kmock.KubernetesEmulator) -> AsyncIterator[Controllers]:
    """This replica: identity ``me``, priority 10, peering object ``voltgrid`` in the namespace."""
    verbs = {"list", "watch", "get", "create", "patch", "delete"}
    api.resources[PEERINGS] = kmock.ResourceInfo(kind="KopfPeering", namespaced=True, verbs=verbs)
    add_node(api)
    api.objects[FUNCTIONS, NS, "echo"] = function(isolation={"allowUnsandboxed": True})
    settings = OperatorSettings(namespaces=(NS,), peering="voltgrid", sweep_interval=5)
    ctl = build_controllers(settings, clock=virtual_now, identity="me", priority=10)
    ctl.ctx.client.login(kopf.ConnectionInfo(server=str(api.url)))
    yield ctl
    await ctl.ctx.client.close()


def has_status(api: kmock.KubernetesEmulator) -> bool:
    return bool(stored(api, FUNCTIONS, "echo").get("status"))


@pytest.mark.looptime
async def test_a_standby_writes_nothing_until_the_active_peer_is_gone(
    api: kmock.KubernetesEmulator, replica: Controllers
) -> None:
    status = {"me": peer(10), "op-b": peer(20)}
    api.objects[PEERINGS, NS, "voltgrid"] = {"metadata": {"name": "voltgrid"}, "status": status}
    async with background(replica.run_functions()):
        await asyncio.sleep(LIFETIME_S - 10)
        assert not replica.gate.is_set()
        assert not has_status(api)  # listed and queued, but held at the gate
        await eventually(lambda: has_status(api))  # op-b's heartbeat is older than its lifetime now
    assert asyncio.get_running_loop().time() >= LIFETIME_S
    assert stored(api, FUNCTIONS, "echo")["status"]["conditions"][0]["status"] == "True"


@pytest.mark.looptime
async def test_a_starting_replica_decides_only_once_it_is_registered(
    api: kmock.KubernetesEmulator, replica: Controllers
) -> None:
    """Two replicas starting together: the higher one registers just as this one starts, along
    with this one (kopf's keepalive); deciding before its own entry would open the gate for it."""
    api.objects[PEERINGS, NS, "voltgrid"] = {"metadata": {"name": "voltgrid"}, "status": {}}
    async with background(replica.run_functions()):
        await asyncio.sleep(1)
        assert not replica.gate.is_set()
        api.objects[PEERINGS, NS, "voltgrid"] = {
            "metadata": {"name": "voltgrid"},
            "status": {"me": peer(10), "op-b": peer(20)},
        }
        await asyncio.sleep(PEERING_CHECK_S * 3)
        assert not replica.gate.is_set()
        assert not has_status(api)


@pytest.mark.looptime
async def test_a_replica_alone_acts_once_registered(api: kmock.KubernetesEmulator, replica: Controllers) -> None:
    api.objects[PEERINGS, NS, "voltgrid"] = {"metadata": {"name": "voltgrid"}, "status": {"me": peer(10)}}
    async with background(replica.run_functions()):
        await eventually(lambda: has_status(api))
    assert asyncio.get_running_loop().time() < PEERING_CHECK_S


@pytest.mark.looptime
async def test_a_higher_priority_peer_arriving_closes_the_gate(
    api: kmock.KubernetesEmulator, replica: Controllers
) -> None:
    api.objects[PEERINGS, NS, "voltgrid"] = {"metadata": {"name": "voltgrid"}, "status": {"op-c": peer(5)}}
    assert await replica.update_gate()  # a lower-priority peer: this replica is the active one
    api.objects[PEERINGS, NS, "voltgrid"] = {
        "metadata": {"name": "voltgrid"},
        "status": {"op-c": peer(5), "op-b": peer(20)},
    }
    assert not await replica.update_gate()
    assert not replica.gate.is_set()


async def test_without_a_peering_object_every_replica_is_active(
    api: kmock.KubernetesEmulator, replica: Controllers
) -> None:
    assert await replica.update_gate()
    assert replica.gate.is_set()
