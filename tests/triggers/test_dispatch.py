"""The dispatcher against a real HTTP server: 2xx acks, failures retry with backoff, then dead-letter."""

from __future__ import annotations

from cloudevents.core.bindings.http import HTTPMessage, from_binary_event
from trighelpers import Sink, make_target

from voltgrid.api.triggers import SessionFrom, SessionSource
from voltgrid.triggers.dispatch import Dispatcher, message_delivery
from voltgrid.triggers.events import Message
from voltgrid.triggers.retry import Verdict


def msg(i: str, key: str | None = None) -> Message:
    return Message(id=i, body=b'{"n": 1}', headers={"tenant": "acme"}, key=key, content_type="application/json")


async def test_delivered_in_binary_mode_with_the_session_header(sink: Sink, dispatcher: Dispatcher) -> None:
    target = make_target(sink, session=SessionFrom(source=SessionSource.HEADER, name="tenant"))
    d, key = message_delivery(target, msg("m1", key="orders.eu"))
    outcome = await dispatcher.deliver(target, d)
    assert outcome.verdict is Verdict.ACK and outcome.attempts == 1
    (got,) = sink.received
    assert got.path == "/fn/ns/echo/events"
    assert got.headers["X-Voltgrid-Session"] == key == "acme"
    event = from_binary_event(HTTPMessage({k.lower(): v for k, v in got.headers.items()}, got.body))
    assert (event.get_id(), event.get_type(), event.get_subject()) == ("m1", "dev.voltgrid.queue.message", "orders.eu")
    assert got.body == b'{"n": 1}'


async def test_fails_twice_then_succeeds_on_the_third_attempt(sink: Sink, dispatcher: Dispatcher) -> None:
    sink.failures["m1"] = 2
    target = make_target(sink)
    outcome = await dispatcher.deliver(target, message_delivery(target, msg("m1"))[0])
    assert (outcome.verdict, outcome.attempts) == (Verdict.ACK, 3)
    assert dispatcher.metrics.retried.labels(target.name)._value.get() == 2


async def test_always_failing_ends_in_dead_letter_after_max_retries(sink: Sink, dispatcher: Dispatcher) -> None:
    sink.always_fail.add("m1")
    target = make_target(sink, max_retries=2)
    outcome = await dispatcher.deliver(target, message_delivery(target, msg("m1"))[0])
    assert (outcome.verdict, outcome.attempts, outcome.last_error) == (Verdict.DEAD_LETTER, 3, "HTTP 503")
    assert len(sink.received) == 3


async def test_no_answer_is_a_failed_attempt(sink: Sink, dispatcher: Dispatcher) -> None:
    target = make_target(sink, max_retries=1)
    dead = type(target)(target.name, "http://127.0.0.1:9/fn/ns/echo/", target.policy, None, target.backoff)
    outcome = await dispatcher.deliver(dead, message_delivery(dead, msg("m1"))[0])
    assert outcome.verdict is Verdict.DEAD_LETTER
    assert outcome.attempts == 2
    assert "ClientConnectorError" in outcome.last_error
