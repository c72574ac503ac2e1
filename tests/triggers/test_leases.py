"""The Lease ledger: racing replicas claim each cron tick once (optimistic concurrency on resourceVersion).

The apiserver here is a small fake of the Lease endpoints that keeps the one rule the ledger relies
on: a replace carrying a stale ``resourceVersion`` is refused with 409, a second create with 409.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cloudevents.core.v1.event import CloudEvent

from voltgrid.api.triggers import Cron
from voltgrid.registry.kubeapi import KubeApi, StaticCredentials
from voltgrid.triggers.cron import run_cron
from voltgrid.triggers.leases import ANNOTATION_LAST_TICK, LeaseLedger, lease_name
from voltgrid.triggers.metrics import TriggerMetrics
from voltgrid.triggers.report import Reporter

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


class FakeLeases:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.conflicts = 0

    def _status(self, code: int, reason: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
        return web.json_response(body, status=code)

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[obj["metadata"]["name"]] = obj
        return obj

    async def get(self, request: web.Request) -> web.Response:
        await asyncio.sleep(0)
        obj = self.objects.get(request.match_info["name"])
        return web.json_response(obj) if obj else self._status(404, "NotFound")

    async def create(self, request: web.Request) -> web.Response:
        obj = await request.json()
        if obj["metadata"]["name"] in self.objects:
            self.conflicts += 1
            return self._status(409, "AlreadyExists")
        return web.json_response(self._store(obj), status=201)

    async def replace(self, request: web.Request) -> web.Response:
        obj = await request.json()
        current = self.objects.get(request.match_info["name"])
        if current is None:
            return self._status(404, "NotFound")
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return self._status(409, "Conflict")
        return web.json_response(self._store(obj))


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[FakeLeases, str]]:
    fake = FakeLeases()
    app = web.Application()
    app.router.add_get(LEASES + "/{name}", fake.get)
    app.router.add_post(LEASES, fake.create)
    app.router.add_put(LEASES + "/{name}", fake.replace)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def ledgers(apiserver: tuple[FakeLeases, str]) -> AsyncIterator[list[LeaseLedger]]:
    _, url = apiserver
    apis = [KubeApi(StaticCredentials(url)) for _ in range(3)]
    try:
        yield [LeaseLedger(api, "voltgrid-system", f"replica-{i}") for i, api in enumerate(apis)]
    finally:
        for api in apis:
            await api.close()


T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


async def test_racing_replicas_claim_each_tick_once(
    apiserver: tuple[FakeLeases, str], ledgers: list[LeaseLedger]
) -> None:
    fake, _ = apiserver
    for n in range(20):
        tick = T0 + timedelta(seconds=10 * n)
        wins = await asyncio.gather(*(ledger.claim("shop/agent/nightly", tick) for ledger in ledgers))
        assert sum(wins) == 1, (n, wins)
        assert all([await ledger.last("shop/agent/nightly") == tick for ledger in ledgers])
    assert fake.conflicts > 0  # the race really happened
    (lease,) = fake.objects.values()
    assert lease["metadata"]["name"] == lease_name("shop/agent/nightly")
    assert lease["metadata"]["annotations"][ANNOTATION_LAST_TICK] == (T0 + timedelta(seconds=190)).isoformat()


async def test_an_older_tick_is_never_claimed(ledgers: list[LeaseLedger]) -> None:
    a, b, _ = ledgers
    assert await a.claim("t", T0 + timedelta(seconds=10))
    assert not await b.claim("t", T0)
    assert not await b.claim("t", T0 + timedelta(seconds=10))
    assert await a.last("other") is None


async def test_two_dispatchers_fire_every_tick_once(ledgers: list[LeaseLedger]) -> None:
    """Two run_cron loops (two replicas) on one Lease: '@every 1s' for ~3.5s fires each tick once."""
    fired: list[str] = []

    async def fire(event: CloudEvent) -> None:
        fired.append(event.get_id())

    cron, metrics = Cron(schedule="@every 1s"), TriggerMetrics()
    tasks = [
        asyncio.create_task(run_cron("shop/agent/t", cron, fire, ledger=ledger, metrics=metrics, reporter=Reporter()))
        for ledger in ledgers[:2]
    ]
    await asyncio.sleep(3.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(fired) >= 3
    assert len(fired) == len(set(fired))  # no tick twice
