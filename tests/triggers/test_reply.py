"""A Function answering an event with a CloudEvent: forwarded to the trigger's sink in binary mode,
retried with the trigger's backoff, and counted when the sink stays down or the reply is malformed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cloudevents.core.v1.event import CloudEvent

from voltgrid.api.function import SessionPolicy
from voltgrid.api.triggers import Retry
from voltgrid.triggers.dispatch import Dispatcher, Target
from voltgrid.triggers.events import delivery
from voltgrid.triggers.retry import Backoff, Verdict

REPLY = {"specversion": "1.0", "id": "r1", "source": "/agent", "type": "dev.example.answer", "data": {"ok": True}}


@dataclass
class Servers:
    """The Function (answers per ``mode``) and the sink (records, fails ``sink_failures`` times first)."""

    url: str = ""
    mode: str = "binary"
    sink_failures: int = 0
    forwarded: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    sink_attempts: int = 0

    async def function(self, _: web.Request) -> web.Response:
        if self.mode == "binary":
            headers = {"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "/agent", "ce-type": "dev.example.answer"}
            return web.Response(body=b'{"ok": true}', headers={**headers, "content-type": "application/json"})
        if self.mode == "structured":
            return web.Response(body=json.dumps(REPLY).encode(), content_type="application/cloudevents+json")
        if self.mode == "malformed":
            return web.Response(body=b'{"id": "x"}', content_type="application/cloudevents+json")
        return web.Response(text="plain ok")

    async def sink(self, request: web.Request) -> web.Response:
        self.sink_attempts += 1
        if self.sink_failures > 0:
            self.sink_failures -= 1
            return web.Response(status=503)
        self.forwarded.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=202)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    app = web.Application()
    app.router.add_post("/fn", s.function)
    app.router.add_post("/sink", s.sink)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    s.url = str(server.make_url("")).rstrip("/")
    try:
        yield s
    finally:
        await server.close()


def target(servers: Servers, max_retries: int = 3) -> Target:
    retry = Backoff.of(Retry(max_retries=max_retries, min_backoff="10ms", max_backoff="20ms"))
    return Target("ns/agent/orders", f"{servers.url}/fn", SessionPolicy(), None, retry, f"{servers.url}/sink")


async def send(dispatcher: Dispatcher, t: Target) -> Verdict:
    event = CloudEvent({"id": "e1", "source": "/q", "type": "dev.voltgrid.queue.message"}, b"{}")
    return (await dispatcher.deliver(t, delivery(t.url, event, SessionPolicy(), None))).verdict


def count(dispatcher: Dispatcher, metric: str) -> float:
    value: float = getattr(dispatcher.metrics, metric).labels("ns/agent/orders")._value.get()
    return value


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_a_cloudevent_reply_is_forwarded_to_the_sink_in_binary_mode(
    servers: Servers, dispatcher: Dispatcher, mode: str
) -> None:
    servers.mode = mode
    servers.sink_failures = 2  # retried with the trigger's backoff
    assert await send(dispatcher, target(servers)) is Verdict.ACK
    ((headers, body),) = servers.forwarded
    assert (headers["ce-id"], headers["ce-source"], headers["ce-type"]) == ("r1", "/agent", "dev.example.answer")
    assert json.loads(body) == {"ok": True}
    assert (count(dispatcher, "replies_forwarded"), count(dispatcher, "replies_failed")) == (1, 2)


async def test_a_plain_answer_forwards_nothing(servers: Servers, dispatcher: Dispatcher) -> None:
    servers.mode = "plain"
    assert await send(dispatcher, target(servers)) is Verdict.ACK
    assert servers.sink_attempts == 0


async def test_a_sink_that_stays_down_drops_the_reply_not_the_event(servers: Servers, dispatcher: Dispatcher) -> None:
    servers.sink_failures = 100
    assert await send(dispatcher, target(servers, max_retries=2)) is Verdict.ACK  # the Function did answer
    assert servers.sink_attempts == 3
    assert (count(dispatcher, "replies_failed"), count(dispatcher, "replies_dropped")) == (3, 1)
    assert count(dispatcher, "delivered") == 1


async def test_a_malformed_reply_is_counted_and_dropped(servers: Servers, dispatcher: Dispatcher) -> None:
    servers.mode = "malformed"
    assert await send(dispatcher, target(servers)) is Verdict.ACK
    assert servers.sink_attempts == 0
    assert count(dispatcher, "replies_dropped") == 1
