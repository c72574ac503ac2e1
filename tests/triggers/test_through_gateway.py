"""Events through a real gateway to local-process instances: a session key pins a conversation to one
instance, in order, while other conversations get instances of their own."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from trighelpers import wait_until

from bgtask import background
from brokers import Broker
from ports import free_port
from voltgrid.api.function import Function
from voltgrid.api.triggers import Retry, SessionFrom, SessionSource
from voltgrid.backends.local import LocalProcessBackend
from voltgrid.gateway.app import GatewayServer
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.triggers.dispatch import Dispatcher, Target
from voltgrid.triggers.events import invoke_url
from voltgrid.triggers.redis_streams import RedisStreamConsumer
from voltgrid.triggers.retry import Backoff

APP = Path(__file__).parent / "apps" / "event_function.py"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, Function, Path]]:
    log = tmp_path / "events.jsonl"
    log.touch()
    fn = Function.model_validate(
        {
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {
                "image": "local",
                "command": [sys.executable, str(APP)],
                "env": [{"name": "EVENT_LOG", "value": str(log)}],
            },
        }
    )
    port = free_port()
    backend = LocalProcessBackend(tmp_path / "state", tmp_path / "storage", ready_timeout=20)
    server = GatewayServer(GatewaySettings(port=port, replica_url=f"http://127.0.0.1:{port}"), backend, [fn])
    await server.start("127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}", fn, log
    finally:
        await server.stop()
        await backend.stop_all()


async def test_a_conversation_stays_on_one_instance_in_order(
    gateway: tuple[str, Function, Path], redis_broker: Broker, dispatcher: Dispatcher
) -> None:
    url, fn, log = gateway
    client = aioredis.Redis.from_url(redis_broker.url)
    try:
        ids = [(await client.xadd("agent-events", {"data": b"{}", "key": f"conv-{i % 3}"})).decode() for i in range(24)]
        target = Target(
            "default/agent/events",
            invoke_url(url, "default", "agent", "/events"),
            fn.spec.sessions,
            SessionFrom(source=SessionSource.KEY),
            Backoff.of(Retry(min_backoff="100ms", max_backoff="1s")),
        )
        consumer = RedisStreamConsumer(
            client,
            "agent-events",
            group="voltgrid",
            consumer="replica-a",
            dead_letter="agent-events.dead-letter",
            prefetch=8,
            dispatcher=dispatcher,
            target=target,
            block=0.1,
        )
        async with background(consumer.run()):
            await wait_until(lambda: len(log.read_text().splitlines()) >= 24, within=60, what="24 events")
    finally:
        await client.aclose()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    by_key: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        by_key.setdefault(line["key"], []).append(line)
    assert sorted(by_key) == ["conv-0", "conv-1", "conv-2"]
    for k, got in by_key.items():
        assert len({g["instance"] for g in got}) == 1, f"{k} reached several instances"
        assert [g["id"] for g in got] == ids[int(k[-1]) :: 3]  # in order, each once
    assert len({got[0]["instance"] for got in by_key.values()}) == 3  # one instance per conversation
