"""The gateway's side of the pod contract: coarse activity checkpoints and warm-pod claims.

Components are wired without HTTP (a fake backend records what would be PATCHed on pods) and
timers run on looptime's virtual clock, so minutes of checkpoint intervals pass instantly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from gwhelpers import TOKEN, FakeBackend, function

from voltgrid.gateway.functions import FunctionCatalog, FunctionEntry
from voltgrid.gateway.lifecycle import Lifecycle
from voltgrid.gateway.manager import SessionManager
from voltgrid.gateway.metrics import GatewayMetrics
from voltgrid.gateway.peers import Peers
from voltgrid.gateway.proxy import Traffic
from voltgrid.gateway.settings import GatewaySettings, load_settings
from voltgrid.registry.ownership import Membership

INTERVAL = 60.0


@dataclass
class Plane:
    backend: FakeBackend
    manager: SessionManager
    lifecycle: Lifecycle
    fn: FunctionEntry


@contextlib.asynccontextmanager
async def _plane(*, cluster: bool = False, affinity: str = "Header") -> AsyncIterator[Plane]:
    """Manager and lifecycle on the test's loop (inside the test: looptime's clock starts there).

    With ``cluster`` the gateway runs as in a cluster: the operator (here: the test) keeps the
    warm pool of one instance and the gateway discovers and claims its pods.
    """
    fn = function("agent", idleTimeout="15m", affinity=affinity)
    extra: dict[str, Any] = {}
    if cluster:
        fn.spec.scaling.warm_pool = 1
        extra = {"manage_warm_pool": False, "warm_discovery_interval": 5.0}
    config = GatewaySettings(internal_token=TOKEN, checkpoint_interval=INTERVAL, **extra)
    backend = FakeBackend("http://127.0.0.1:9")
    catalog = FunctionCatalog(config, [fn])
    membership = Membership(config.self_url)
    manager = SessionManager(config, backend, catalog, membership, GatewayMetrics())
    async with aiohttp.ClientSession() as http:
        lifecycle = Lifecycle(manager, http, Peers(http, membership, TOKEN))
        lifecycle.scheduler.start()
        entry = catalog.get("default/agent")
        assert entry is not None
        try:
            yield Plane(backend, manager, lifecycle, entry)
        finally:
            await lifecycle.stop()
            await manager.close()


async def _request(manager: SessionManager, record: object, seconds: float) -> None:
    manager.begin(record)  # type: ignore[arg-type]
    await asyncio.sleep(seconds)
    manager.end(record, Traffic())  # type: ignore[arg-type]


@pytest.mark.looptime
async def test_an_instance_in_use_is_checkpointed_once_per_interval_and_an_idle_one_never() -> None:
    async with _plane() as plane:
        await _checkpoints_follow_activity(plane)


async def _checkpoints_follow_activity(plane: Plane) -> None:
    loop = asyncio.get_running_loop()
    m = plane.manager
    record = await m.new_session(plane.fn)
    instance, cold = await m.instance_for(plane.fn, record)
    assert cold
    for _ in range(100):  # a busy session: nothing is written on the request path
        await _request(m, record, 0.1)
    last_request = loop.time()
    assert plane.backend.checkpoints == []

    await asyncio.sleep(INTERVAL - last_request + 1)  # first pass: ONE write, of the last activity
    ((pod, when),) = plane.backend.checkpoints
    assert pod == instance.id
    assert abs((time.time() - when) - (loop.time() - last_request)) < 1.0  # wall clock of the activity

    await asyncio.sleep(3 * INTERVAL)  # idle: no further writes
    assert len(plane.backend.checkpoints) == 1

    stream = loop.create_task(_request(m, record, 2.5 * INTERVAL))  # a long stream stays "active"
    await asyncio.sleep(3 * INTERVAL)
    await stream
    # two passes during the stream, one after it for its end: once per pass, no more
    assert [p for p, _ in plane.backend.checkpoints] == [instance.id] * 4


@pytest.mark.looptime
async def test_a_released_instance_is_not_checkpointed() -> None:
    async with _plane() as plane:
        m = plane.manager
        record = await m.new_session(plane.fn)
        await m.instance_for(plane.fn, record)
        await _request(m, record, 1)
        await plane.lifecycle.release(record, "idle", forget=False)
        await asyncio.sleep(2 * INTERVAL)
        assert plane.backend.checkpoints == [] and len(plane.backend.deleted) == 1


@pytest.mark.looptime
async def test_claiming_an_operators_warm_pod_checkpoints_it_at_once() -> None:
    async with _plane(cluster=True) as p:
        await _claims(p)


async def _claims(p: Plane) -> None:
    m = p.manager
    warm = await p.backend.create(p.fn.model, "wabc", warm=True)  # what the operator started
    record = await m.new_session(p.fn)  # found by one LIST, claimed with its pre-minted id
    assert (record.key, record.instance, p.backend.lists) == ("wabc", warm.id, 1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [pod for pod, _ in p.backend.checkpoints] == [warm.id]  # claimed: the operator refills
    assert warm.last_active is not None

    instance, cold = await m.instance_for(p.fn, record)
    assert (instance.id, cold) == (warm.id, False)

    second = await m.new_session(p.fn)  # the pool is empty; LISTed again only after the interval
    assert p.backend.lists == 1 and second.instance is None and second.key != "wabc"
    await asyncio.sleep(5)
    refill = await p.backend.create(p.fn.model, "wdef", warm=True)
    third = await m.new_session(p.fn)
    assert (third.key, third.instance, p.backend.lists) == ("wdef", refill.id, 2)


@pytest.mark.looptime
async def test_a_session_less_function_starts_on_a_warm_pod_too() -> None:
    async with _plane(cluster=True, affinity="None") as p:
        warm = await p.backend.create(p.fn.model, "wabc", warm=True)
        instance, started = await p.manager.least_loaded(p.fn)
        await asyncio.sleep(0)
        assert (instance.id, started, len(p.backend.created)) == (warm.id, True, 1)  # no cold start
        assert [pod for pod, _ in p.backend.checkpoints] == [warm.id]


@pytest.mark.looptime
async def test_resync_offers_unclaimed_warm_pods_and_adopts_claimed_ones() -> None:
    async with _plane(cluster=True) as p:
        await _resync(p)


async def _resync(p: Plane) -> None:
    m = p.manager
    unclaimed = await p.backend.create(p.fn.model, "wone", warm=True)
    claimed = await p.backend.create(p.fn.model, "wtwo", warm=True)
    await p.backend.checkpoint(claimed, time.time())  # claimed by a replica that died
    await p.lifecycle.resync()
    assert [i.id for i in m.warm.instances()] == [unclaimed.id]
    adopted = m.registry.find("default/agent", "wtwo")
    assert adopted is not None and adopted.instance == claimed.id

    p.backend.deleted.append(unclaimed.id)  # the operator shrank the pool
    await p.lifecycle.resync()
    assert m.warm.instances() == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"VOLTGRID_GATEWAY_MANAGE_WARM_POOL": "true"}, True)],
)
def test_backend_defaults_sit_below_env_and_file(env: dict[str, str], expected: bool) -> None:
    settings = load_settings(None, env, {}, {"manage_warm_pool": False})
    assert settings.manage_warm_pool is expected
