"""The instance budget of one Function, on its holder: seats, slots, packing, release, expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from gwhelpers import TOKEN, FakeBackend, function

from voltgrid.backends.base import Instance
from voltgrid.gateway.budget import Budgets
from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.functions import FunctionCatalog, FunctionEntry
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.registry.ownership import Membership

FN = "default/agent"


def _budgets(backend: FakeBackend, tasks: set[asyncio.Task[Any]], **sessions: Any) -> tuple[Budgets, FunctionEntry]:
    fn = function("agent", **sessions)
    fn.spec.scaling.max_instances = 2
    settings = GatewaySettings(internal_token=TOKEN, cold_start_timeout=5)

    def spawn(coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    catalog = FunctionCatalog(settings, [fn])
    budgets = Budgets(settings, backend, catalog, Membership(settings.self_url), local_seats=lambda _: {}, spawn=spawn)
    entry = catalog.get(FN)
    assert entry is not None
    return budgets, entry


async def _start(budgets: Budgets, entry: FunctionEntry, backend: FakeBackend) -> Instance:
    grant = await budgets.acquire(entry)
    if grant.instance is not None:
        return grant.instance
    assert grant.slot is not None
    instance = await backend.create(entry.model, "s")
    await budgets.started(FN, grant.slot, instance)
    return instance


@pytest.mark.looptime
async def test_slots_count_from_the_grant_and_the_last_seat_deletes() -> None:
    backend, tasks = FakeBackend("http://127.0.0.1:9"), set[asyncio.Task[Any]]()
    budgets, entry = _budgets(backend, tasks)
    first, second = await asyncio.gather(_start(budgets, entry, backend), _start(budgets, entry, backend))
    with pytest.raises(GatewayError) as full:
        await _start(budgets, entry, backend)
    assert (full.value.status, full.value.code, full.value.headers) == (503, "max_instances", {"Retry-After": "1"})
    await budgets.release(FN, first)
    assert backend.deleted == [first.id] and budgets.count(FN) == 1
    assert (await _start(budgets, entry, backend)).id not in (first.id, second.id)
    await _cancel(tasks)


@pytest.mark.looptime
async def test_seats_pack_onto_a_starting_instance_and_its_failure_frees_the_slot() -> None:
    backend, tasks = FakeBackend("http://127.0.0.1:9"), set[asyncio.Task[Any]]()
    budgets, entry = _budgets(backend, tasks, sessionsPerInstance=3)
    grant = await budgets.acquire(entry)
    assert grant.slot is not None
    waiting = asyncio.ensure_future(budgets.acquire(entry))  # a seat on the instance being started
    await asyncio.sleep(1)
    assert not waiting.done() and budgets.count(FN) == 1
    await budgets.failed(FN, grant.slot)
    retried = await waiting  # the start failed: it gets a slot of its own instead
    assert retried.slot is not None and budgets.count(FN) == 1
    instance = await backend.create(entry.model, "s")
    await budgets.started(FN, retried.slot, instance)
    seats = [await budgets.acquire(entry) for _ in range(2)]
    assert [g.instance for g in seats] == [instance, instance] and budgets.count(FN) == 1
    for _ in range(2):
        await budgets.release(FN, instance)
    assert backend.deleted == []
    await budgets.release(FN, instance)
    assert backend.deleted == [instance.id] and budgets.count(FN) == 0
    await _cancel(tasks)


@pytest.mark.looptime
async def test_a_slot_whose_starter_never_reports_is_dropped() -> None:
    backend, tasks = FakeBackend("http://127.0.0.1:9"), set[asyncio.Task[Any]]()
    budgets, entry = _budgets(backend, tasks)
    await budgets.acquire(entry)
    await budgets.acquire(entry)
    assert budgets.count(FN) == 2
    await asyncio.sleep(11)  # twice the cold-start timeout
    assert budgets.count(FN) == 0
    assert (await budgets.acquire(entry)).slot is not None
    await _cancel(tasks)


async def _cancel(tasks: set[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
