"""Each trigger's state as the runner reports it, against a real RabbitMQ: the reasons name the problem."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from trighelpers import Sink, wait_until

from brokers import Broker
from ports import free_port
from voltgrid.api.function import Function
from voltgrid.triggers.dispatch import Dispatcher
from voltgrid.triggers.ingress import Ingress
from voltgrid.triggers.runner import Missing, Runner, plan


def agent(queue: str) -> Function:
    trigger = {"broker": "RabbitMQ", "urlFrom": {"name": "mq"}, "queue": queue}
    return Function.model_validate(
        {
            "metadata": {"name": "agent", "namespace": "shop"},
            "spec": {
                "image": "x",
                "triggers": [
                    {"name": "orders", "type": "queue", "queue": trigger},
                    {"name": "tick", "type": "cron", "cron": {"schedule": "0 3 * * *", "timezone": "Europe/Paris"}},
                    {"name": "audit", "type": "cloudevents", "cloudEvents": {}},
                ],
            },
        }
    )


@pytest.fixture
async def runner(dispatcher: Dispatcher) -> AsyncIterator[Runner]:
    r = Runner(dispatcher, Ingress(dispatcher), "r1")
    try:
        yield r
    finally:
        await r.close()


async def run(runner: Runner, sink: Sink, url: str | Missing, queue: str = "orders") -> None:
    jobs, routes, problems = plan(sink.url, [agent(queue)], lambda _ns, _ref: url)
    runner.dispatcher.reporter.functions([agent(queue)])
    await runner.apply(jobs, routes, problems)


def state(runner: Runner, trigger: str = "orders") -> tuple[bool, str, str]:
    s = runner.dispatcher.reporter.snapshot().get(f"shop/agent/{trigger}") or {}
    return s.get("ready", False), s.get("reason", ""), s.get("message", "")


async def test_a_missing_secret_is_named_and_the_other_triggers_are_ready(runner: Runner, sink: Sink) -> None:
    await run(runner, sink, Missing("SecretMissing", "Secret shop/mq does not exist"))
    assert state(runner) == (False, "SecretMissing", "Secret shop/mq does not exist")
    assert state(runner, "tick") == (True, "Scheduled", "schedule 0 3 * * * (Europe/Paris)")
    assert state(runner, "audit")[:2] == (True, "Routed")


async def test_an_unreachable_broker_is_named(runner: Runner, sink: Sink) -> None:
    await run(runner, sink, f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert state(runner)[:2] == (False, "Connecting")
    await wait_until(lambda: state(runner)[1] == "BrokerUnreachable", what="BrokerUnreachable")


async def test_a_missing_queue_then_consuming(runner: Runner, sink: Sink, rabbitmq: Broker) -> None:
    queue = f"absent-{uuid.uuid4().hex[:8]}"
    await run(runner, sink, rabbitmq.url, queue)
    await wait_until(lambda: state(runner)[1] == "QueueNotFound", what="QueueNotFound")
    assert queue in state(runner)[2]
    connection = await aio_pika.connect(rabbitmq.url)
    async with connection:
        await (await connection.channel()).declare_queue(queue, durable=True)
    await wait_until(lambda: state(runner)[:2] == (True, "Consuming"), what="Consuming after the restart")
