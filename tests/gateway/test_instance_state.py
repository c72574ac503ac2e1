"""One record per instance, owned by the manager: its counters cannot drift from the sessions and
requests they count, whatever order binds, unbinds, forgets and requests come in."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from gwhelpers import TOKEN, FakeBackend, function
from hypothesis import given, settings, strategies

from voltgrid.backends.base import Instance
from voltgrid.gateway.functions import FunctionCatalog, FunctionEntry
from voltgrid.gateway.manager import InstanceState, SessionManager
from voltgrid.gateway.metrics import GatewayMetrics
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.registry.ownership import Membership

SESSIONS = 4
INSTANCES = 3


def _manager(affinity: str = "Header") -> tuple[SessionManager, FunctionEntry]:
    config = GatewaySettings(internal_token=TOKEN)
    catalog = FunctionCatalog(config, [function("agent", affinity=affinity, sessionsPerInstance=SESSIONS)])
    backend = FakeBackend("http://127.0.0.1:9")
    manager = SessionManager(config, backend, catalog, Membership(config.self_url), GatewayMetrics())
    entry = catalog.get("default/agent")
    assert entry is not None
    return manager, entry


def _instance(n: int) -> Instance:
    return Instance(f"i{n}", "default/agent", "http://127.0.0.1:9", f"s{n}")


def _gauge(manager: SessionManager) -> float:
    return manager.metrics.instances.labels("default/agent")._value.get()


@pytest.mark.looptime
async def test_a_request_outliving_its_instance_never_drives_a_new_record_negative() -> None:
    """The instance is forgotten (found dead) and adopted again while a request on it is in
    flight: the request's end is taken off the record it was counted on, not the new one."""
    manager, _ = _manager("None")
    instance = _instance(0)
    counted = manager.begin_request(instance)
    assert manager.forget_instance(instance.id) is instance
    fresh = manager.adopt_instance(instance)
    manager.end_request(counted)
    assert (fresh.inflight, fresh.last_active) == (0, None)
    assert counted.inflight == 0
    assert manager.instance_state(instance.id) is fresh
    await manager.close()


@pytest.mark.looptime
async def test_the_end_of_a_request_is_the_instance_activity_the_idle_timer_reads() -> None:
    manager, _ = _manager("None")
    instance = _instance(0)
    counted = manager.begin_request(instance)
    assert (counted.inflight, counted.last_active) == (1, None)
    await asyncio.sleep(30)
    manager.end_request(counted)
    assert counted.inflight == 0 and counted.last_active == manager.now()
    await manager.close()


@dataclass
class Model:
    """What the counters must equal, kept independently of the manager."""

    open_requests: list[InstanceState]


session = strategies.integers(0, SESSIONS - 1)
instance = strategies.integers(0, INSTANCES - 1)
OPS = strategies.lists(
    strategies.one_of(
        strategies.tuples(strategies.just("bind"), session, instance),
        strategies.tuples(strategies.just("unbind"), session, strategies.just(0)),
        strategies.tuples(strategies.just("forget"), instance, strategies.just(0)),
        strategies.tuples(strategies.just("begin"), instance, strategies.just(0)),
        strategies.tuples(strategies.just("end"), strategies.integers(0, 7), strategies.just(0)),
    ),
    max_size=40,
)


async def _run(ops: list[tuple[str, int, int]]) -> None:
    manager, fn = _manager()
    records = [manager.create_session(fn, f"s{n}") for n in range(SESSIONS)]
    model = Model([])
    for op, a, b in ops:
        if op == "bind":
            manager.bind(records[a], _instance(b))
        elif op == "unbind" and records[a].instance is not None:
            manager.unbind(records[a])
        elif op == "forget":
            manager.forget_instance(f"i{a}")
        elif op == "begin":
            model.open_requests.append(manager.begin_request(_instance(a)))
        elif op == "end" and model.open_requests:
            manager.end_request(model.open_requests.pop(a % len(model.open_requests)))
        _check(manager, records, model)
    await manager.close()


def _check(manager: SessionManager, records: list, model: Model) -> None:  # type: ignore[type-arg]
    known = set(manager.instance_ids())
    # seats (what the budget is rebuilt from) == sessions bound, per instance, all on known ones
    bound: dict[str, int] = {}
    for record in records:
        if record.instance is not None:
            assert record.instance in known, "a session is bound to an instance the manager forgot"
            bound[record.instance] = bound.get(record.instance, 0) + 1
    assert manager.seats("default/agent") == bound
    for instance_id in known:
        assert len(manager.registry.sessions_on(instance_id)) == bound.get(instance_id, 0)
    # in flight == requests begun and not ended, counted on the records that are still current
    for state in manager.instance_states():
        assert state.inflight == sum(1 for s in model.open_requests if s is state) >= 0
    assert all(s.inflight >= 0 for s in model.open_requests)
    # the instances gauge counts the records
    assert _gauge(manager) == len(known)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_seats_sessions_and_inflight_never_drift(ops: list[tuple[str, int, int]]) -> None:
    asyncio.run(_run(ops))
