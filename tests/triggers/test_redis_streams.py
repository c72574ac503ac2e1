"""Queue triggers on a real Redis stream: XACK after 2xx, XAUTOCLAIM of a dead replica's entries, dead letter."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from trighelpers import Sink, delivered, make_target, wait_until

from bgtask import background
from brokers import Broker
from voltgrid.api.triggers import SessionFrom, SessionSource
from voltgrid.triggers.dispatch import ATTEMPTS_HEADER, Dispatcher, Target
from voltgrid.triggers.redis_streams import RedisStreamConsumer

GROUP = "voltgrid"


@pytest.fixture
async def client(redis_broker: Broker) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_broker.url)
    try:
        yield r
    finally:
        await r.aclose()


async def add(client: aioredis.Redis, n: int, conversations: int = 0) -> tuple[str, list[str]]:
    stream = f"orders-{uuid.uuid4().hex[:8]}"
    ids = []
    for i in range(n):
        fields = {"data": f'{{"n": {i}}}', "content-type": "application/json"}
        if conversations:
            fields["key"] = f"c{i % conversations}"
        ids.append((await client.xadd(stream, fields)).decode())  # type: ignore[arg-type]
    return stream, ids


async def pending(client: aioredis.Redis, stream: str) -> int:
    info = await client.xpending(stream, GROUP)
    return int(info["pending"])


def consumer(
    client: aioredis.Redis, stream: str, name: str, dispatcher: Dispatcher, target: Target, **kw: float
) -> RedisStreamConsumer:
    return RedisStreamConsumer(
        client,
        stream,
        group=GROUP,
        consumer=name,
        dead_letter=f"{stream}.dead-letter",
        prefetch=10,
        dispatcher=dispatcher,
        target=target,
        block=0.1,
        **kw,
    )


async def test_entries_stay_pending_until_2xx_and_a_dead_replicas_are_taken_over(
    client: aioredis.Redis, sink: Sink, dispatcher: Dispatcher
) -> None:
    stream, ids = await add(client, 40)
    target = make_target(sink)
    sink.hold = asyncio.Event()
    async with background(consumer(client, stream, "replica-a", dispatcher, target, claim_idle=30).run()):
        await wait_until(lambda: len(sink.received) == 10, what="replica-a's prefetch in flight")
        assert await pending(client, stream) == 10  # read, not acknowledged
    # replica-a died holding 10 entries; replica-b reads the other 30 and claims those 10 once idle.
    sink.hold.set()
    async with background(consumer(client, stream, "replica-b", dispatcher, target, claim_idle=0.5).run()):
        await wait_until(lambda: set(delivered(sink)) == set(ids), what="all 40 entries")
        await wait_until(lambda: dispatcher.metrics.delivered.labels(target.name)._value.get() == 40)
    assert await pending(client, stream) == 0
    assert sorted(sink.ids()) == sorted(ids + ids[:10])  # duplicates only around the crash


async def test_lag_is_what_no_replica_has_read_yet(client: aioredis.Redis, sink: Sink, dispatcher: Dispatcher) -> None:
    stream, _ = await add(client, 25)
    target = make_target(sink)
    sink.hold = asyncio.Event()
    lag = dispatcher.metrics.lag.labels(target.name)
    async with background(consumer(client, stream, "replica-a", dispatcher, target, claim_idle=0.3).run()):
        await wait_until(lambda: lag._value.get() == 15, what="a lag of 25 entries minus the 10 read")
        sink.hold.set()
        await wait_until(lambda: lag._value.get() == 0, what="no lag once all are read")


async def test_slow_delivery_is_not_taken_over(client: aioredis.Redis, sink: Sink, dispatcher: Dispatcher) -> None:
    """An entry still being delivered is touched, so another replica's XAUTOCLAIM leaves it alone."""
    stream, ids = await add(client, 1)
    target = make_target(sink)
    sink.delay = 2.0  # four times claim_idle
    async with (
        background(consumer(client, stream, "replica-a", dispatcher, target, claim_idle=0.5).run()),
    ):
        await wait_until(lambda: len(sink.received) == 1)
        async with background(consumer(client, stream, "replica-b", dispatcher, target, claim_idle=0.5).run()):
            await wait_until(lambda: delivered(sink) == ids, within=10)
    assert sink.ids() == ids  # POSTed once


async def test_fails_twice_then_succeeds_and_always_failing_is_dead_lettered(
    client: aioredis.Redis, sink: Sink, dispatcher: Dispatcher
) -> None:
    stream, ids = await add(client, 4)
    sink.failures[ids[1]] = 2
    sink.always_fail.add(ids[2])
    target = make_target(sink, max_retries=2)
    async with background(consumer(client, stream, "replica-a", dispatcher, target).run()):
        await wait_until(lambda: set(delivered(sink)) == {ids[0], ids[1], ids[3]})
        await wait_until(lambda: dispatcher.metrics.dead_lettered.labels(target.name)._value.get() == 1)
        await wait_until(lambda: sink.ids().count(ids[2]) == 3)
    await wait_until_async(lambda: pending(client, stream), 0)
    ((_, fields),) = await client.xrange(f"{stream}.dead-letter")
    assert fields[b"data"] == b'{"n": 2}'
    assert fields[ATTEMPTS_HEADER.encode()] == b"3"
    assert sink.ids().count(ids[1]) == 3


async def wait_until_async(probe: Callable[[], Awaitable[int]], value: int) -> None:
    for _ in range(250):
        if await probe() == value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {await probe()}, not {value}")


async def test_order_per_key(client: aioredis.Redis, sink: Sink, dispatcher: Dispatcher) -> None:
    stream, ids = await add(client, 30, conversations=3)
    sink.delay = 0.01
    sink.failures[ids[0]] = 2
    target = make_target(sink, session=SessionFrom(source=SessionSource.KEY))
    async with background(consumer(client, stream, "replica-a", dispatcher, target).run()):
        await wait_until(lambda: len(delivered(sink)) == 30)
    by_key: dict[str, list[str]] = {}
    for r in (r for r in sink.received if r.ok):
        by_key.setdefault(r.headers["X-Voltgrid-Session"], []).append(r.headers["ce-id"])
    assert by_key == {f"c{k}": ids[k::3] for k in range(3)}
    assert sink.max_in_flight > 1
