"""Queue triggers on a real RabbitMQ: at least once (ack after 2xx), retries, dead letter, order per key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from trighelpers import Sink, delivered, make_target, wait_until

from bgtask import background
from brokers import Broker
from voltgrid.api.triggers import SessionFrom, SessionSource
from voltgrid.triggers.dispatch import ATTEMPTS_HEADER, Dispatcher, Target
from voltgrid.triggers.rabbitmq import RabbitConsumer


@pytest.fixture
async def channel(rabbitmq: Broker) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(rabbitmq.url)
    async with connection:
        yield await connection.channel()


async def new_queue(channel: AbstractChannel) -> str:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    await channel.declare_queue(name, durable=True)
    return name


async def publish(channel: AbstractChannel, queue: str, n: int, conversations: int = 0) -> list[str]:
    """``n`` messages m0..m<n-1>; with ``conversations``, header 'conversation' cycles c0, c1, ..."""
    ids = []
    for i in range(n):
        ids.append(f"m{i}")
        headers: dict[str, Any] = {"conversation": f"c{i % conversations}"} if conversations else {}
        body = aio_pika.Message(f'{{"n": {i}}}'.encode(), message_id=f"m{i}", headers=headers)
        await channel.default_exchange.publish(body, routing_key=queue)
    return ids


async def depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def wait_until_depth(channel: AbstractChannel, queue: str, n: int) -> None:
    for _ in range(250):
        if await depth(channel, queue) == n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"queue {queue} has {await depth(channel, queue)} ready messages, not {n}")


def consumer(broker: Broker, queue: str, dispatcher: Dispatcher, target: Target, prefetch: int = 10) -> RabbitConsumer:
    return RabbitConsumer(
        broker.url, queue, dead_letter=f"{queue}.dead-letter", prefetch=prefetch, dispatcher=dispatcher, target=target
    )


async def test_all_delivered_and_nothing_acked_before_2xx(
    rabbitmq: Broker, channel: AbstractChannel, sink: Sink, dispatcher: Dispatcher
) -> None:
    """A replica that dies mid-delivery acked nothing: the next one gets every message, 0 lost."""
    queue = await new_queue(channel)
    ids = await publish(channel, queue, 50)
    target = make_target(sink)
    sink.hold = asyncio.Event()
    async with background(consumer(rabbitmq, queue, dispatcher, target, prefetch=10).run()):
        await wait_until(lambda: len(sink.received) == 10, what="the prefetch to be in flight")
    # The first replica is gone with 10 requests unanswered: the broker has all 50 ready again.
    assert dispatcher.metrics.delivered.labels(target.name)._value.get() == 0
    await wait_until_depth(channel, queue, 50)
    sink.hold.set()
    async with background(consumer(rabbitmq, queue, dispatcher, target).run()):
        await wait_until(lambda: set(delivered(sink)) == set(ids), what="all 50 messages")
        await wait_until(lambda: dispatcher.metrics.delivered.labels(target.name)._value.get() == 50)
    await wait_until_depth(channel, queue, 0)
    # Duplicates only around the crash: the ten held messages were POSTed twice, the others once.
    assert sorted(sink.ids()) == sorted(ids + ids[:10])


async def test_fails_twice_then_succeeds_and_always_failing_is_dead_lettered(
    rabbitmq: Broker, channel: AbstractChannel, sink: Sink, dispatcher: Dispatcher
) -> None:
    queue = await new_queue(channel)
    ids = await publish(channel, queue, 5)
    sink.failures["m1"] = 2
    sink.always_fail.add("m3")
    target = make_target(sink, max_retries=2)
    async with background(consumer(rabbitmq, queue, dispatcher, target).run()):
        await wait_until(lambda: set(delivered(sink)) == set(ids) - {"m3"}, what="the deliverable messages")
        await wait_until(lambda: dispatcher.metrics.dead_lettered.labels(target.name)._value.get() == 1)
        await wait_until(lambda: sink.ids().count("m3") == 3)
        await wait_until_depth(channel, queue, 0)
    assert sink.ids().count("m1") == 3
    dead = await channel.declare_queue(f"{queue}.dead-letter", passive=True)
    message = await dead.get(timeout=5)
    assert message is not None
    assert (message.message_id, message.body, message.headers[ATTEMPTS_HEADER]) == ("m3", b'{"n": 3}', 3)
    await message.ack()


async def test_order_per_session_key_while_keys_spread(
    rabbitmq: Broker, channel: AbstractChannel, sink: Sink, dispatcher: Dispatcher
) -> None:
    queue = await new_queue(channel)
    await publish(channel, queue, 60, conversations=3)
    sink.delay = 0.01
    sink.failures["m0"] = 2  # c0's first message is retried: c0's later ones must wait for it
    target = make_target(sink, session=SessionFrom(source=SessionSource.HEADER, name="conversation"))
    async with background(consumer(rabbitmq, queue, dispatcher, target, prefetch=12).run()):
        await wait_until(lambda: len(delivered(sink)) == 60, what="60 deliveries")
    by_key: dict[str, list[int]] = {}
    for r in (r for r in sink.received if r.ok):
        by_key.setdefault(r.headers["X-Voltgrid-Session"], []).append(int(r.headers["ce-id"][1:]))
    assert by_key == {f"c{k}": list(range(k, 60, 3)) for k in range(3)}
    assert sink.max_in_flight > 1  # different keys were delivered concurrently


async def test_lag_is_the_queues_ready_messages(
    rabbitmq: Broker, channel: AbstractChannel, sink: Sink, dispatcher: Dispatcher
) -> None:
    """Same gauge and label as the Redis lag: messages the broker has not handed to any replica."""
    queue = await new_queue(channel)
    await publish(channel, queue, 25)
    target = make_target(sink)
    sink.hold = asyncio.Event()
    lag = dispatcher.metrics.lag.labels(target.name)
    rabbit = RabbitConsumer(
        rabbitmq.url, queue, dead_letter=f"{queue}.dl", prefetch=10, dispatcher=dispatcher, target=target,
        lag_interval=0.05,
    )  # fmt: skip
    async with background(rabbit.run()):
        await wait_until(lambda: len(sink.received) == 10, what="the prefetch to be in flight")
        await wait_until(lambda: lag._value.get() == 15, what="a lag of 25 messages minus the 10 in flight")
        sink.hold.set()
        await wait_until(lambda: lag._value.get() == 0, what="no lag once all are delivered")
