"""A RabbitMQ (AMQP 0-9-1) queue consumed at least once through aio-pika.

The broker's prefetch (basic.qos) bounds the messages in flight on this replica; each is
acknowledged only after the Function answered 2xx, or after it was published (with a publisher
confirm) to the dead-letter queue. A replica that dies holds no acknowledged-but-undelivered
message: the broker redelivers everything it had not acked to the other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from voltgrid.triggers.dispatch import ATTEMPTS_HEADER, ERROR_HEADER, Dispatcher, Outcome, Target, message_delivery
from voltgrid.triggers.events import Message
from voltgrid.triggers.lanes import Lanes
from voltgrid.triggers.report import CONSUMING
from voltgrid.triggers.retry import Verdict

log = logging.getLogger(__name__)

#: Seconds between two reads of the queue's depth for the lag gauge: a passive declare is one
#: round trip to the broker, cheap, but no use more often than Prometheus scrapes.
DEFAULT_LAG_INTERVAL: Final = 15.0


def as_message(incoming: AbstractIncomingMessage) -> Message:
    """An AMQP message, broker-neutral: header values as text, the routing key as its key."""
    headers = {k: v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in incoming.headers.items()}
    return Message(
        id=incoming.message_id or f"amqp-{incoming.delivery_tag}",
        body=incoming.body,
        headers=headers,
        key=incoming.routing_key or None,
        content_type=incoming.content_type,
    )


class RabbitConsumer:
    def __init__(
        self,
        url: str,
        queue: str,
        *,
        dead_letter: str,
        prefetch: int,
        dispatcher: Dispatcher,
        target: Target,
        lag_interval: float = DEFAULT_LAG_INTERVAL,
    ) -> None:
        self.url = url
        self.queue = queue
        self.dead_letter = dead_letter
        self.prefetch = prefetch
        self.dispatcher = dispatcher
        self.target = target
        self.lag_interval = lag_interval
        self._lanes = Lanes()

    async def run(self) -> None:
        """Consume until cancelled; messages in flight at cancellation stay unacked (redelivered)."""
        tasks: set[asyncio.Task[None]] = set()
        connection = await aio_pika.connect_robust(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.prefetch)
            await channel.declare_queue(self.dead_letter, durable=True)
            queue = await channel.declare_queue(self.queue, passive=True)
            self.dispatcher.reporter.state(self.target.name, True, CONSUMING, f"consuming RabbitMQ queue {self.queue}")
            tasks.add(asyncio.create_task(self._report_lag(connection)))
            async with queue.iterator() as messages:
                async for incoming in messages:
                    task = asyncio.create_task(self._handle(channel, incoming))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await connection.close()

    async def _report_lag(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        """The queue's ready messages (delivered to no consumer yet), as the trigger's lag gauge.

        A passive declare answers the queue's ``message_count``: the broker's count of messages
        ready, not those in flight unacknowledged, which is what the Redis gauge's group lag means
        too. It runs on a channel of its own, so a failed declare (the queue deleted) cannot close
        the consuming channel.
        """
        channel = await connection.channel()
        try:
            # A robust channel answers a passive declare of a known queue from its cache: the first
            # declare gives the queue, ``declare()`` on it asks the broker each time.
            queue = await channel.declare_queue(self.queue, passive=True, robust=False)
            while True:
                ready = (await queue.declare()).message_count
                if ready is not None:
                    self.dispatcher.metrics.lag.labels(self.target.name).set(ready)
                await asyncio.sleep(self.lag_interval)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await channel.close()

    async def _handle(self, channel: aio_pika.abc.AbstractChannel, incoming: AbstractIncomingMessage) -> None:
        message = as_message(incoming)
        d, key = message_delivery(self.target, message)
        outcome = await self._lanes.run(key, lambda: self.dispatcher.deliver(self.target, d))
        if outcome.verdict is Verdict.DEAD_LETTER:
            await self._dead_letter(channel, incoming, outcome)
        await incoming.ack()

    async def _dead_letter(
        self, channel: aio_pika.abc.AbstractChannel, incoming: AbstractIncomingMessage, outcome: Outcome
    ) -> None:
        headers = dict(incoming.headers)
        headers[ATTEMPTS_HEADER] = outcome.attempts
        headers[ERROR_HEADER] = outcome.last_error
        copy = aio_pika.Message(
            incoming.body,
            headers=headers,
            content_type=incoming.content_type,
            message_id=incoming.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await channel.default_exchange.publish(copy, routing_key=self.dead_letter)  # confirmed before the ack
