"""The CloudEvents ingress: binary, structured and batch in; filters; fan-out; 400 naming the problem."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings, strategies
from trighelpers import Sink, make_target

from ports import free_port
from voltgrid.api.triggers import Filter, SessionFrom, SessionSource
from voltgrid.backends.local import LocalProcessBackend
from voltgrid.errors import MalformedEventError
from voltgrid.gateway.app import GatewayServer
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.triggers.dispatch import Dispatcher
from voltgrid.triggers.events import BATCH, STRUCTURED, parse
from voltgrid.triggers.ingress import Ingress, Route, ingress_app, matches

BINARY = {"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "/shop", "ce-type": "order.created"}
EVENT = {"specversion": "1.0", "id": "e1", "source": "/shop", "type": "order.created", "subject": "cart-7"}


@pytest.mark.parametrize(
    ("headers", "body", "ids"),
    [
        ({**BINARY, "content-type": "application/json"}, b'{"total": 3}', ["e1"]),
        ({"content-type": STRUCTURED}, json.dumps(EVENT).encode(), ["e1"]),
        ({"content-type": f"{STRUCTURED}; charset=utf-8"}, json.dumps(EVENT).encode(), ["e1"]),
        ({"content-type": BATCH}, json.dumps([EVENT, {**EVENT, "id": "e2"}]).encode(), ["e1", "e2"]),
        ({"content-type": BATCH}, b"[]", []),
    ],
)
def test_parse_modes(headers: dict[str, str], body: bytes, ids: list[str]) -> None:
    assert [e.get_id() for e in parse(headers, body)] == ids


def test_binary_data_is_the_body_and_structured_data_is_the_field() -> None:
    (b,) = parse({**BINARY, "content-type": "application/json"}, b'{"total": 3}')
    (s,) = parse({"content-type": STRUCTURED}, json.dumps({**EVENT, "data": {"total": 3}}).encode())
    assert b.get_data() == s.get_data() == {"total": 3}
    assert s.get_subject() == "cart-7"


@pytest.mark.parametrize(
    ("headers", "body", "problem"),
    [
        ({"content-type": "text/plain"}, b"hi", "not a CloudEvent: no ce-specversion header"),
        ({}, b"", "content type 'none'"),
        ({**BINARY, "ce-id": ""}, b"", "missing required header(s) ce-id"),
        ({"ce-specversion": "1.0"}, b"", "ce-id, ce-source, ce-type"),
        ({**BINARY, "ce-specversion": "0.9"}, b"", "specversion"),
        ({**BINARY, "ce-time": "yesterday"}, b"", "yest"),
        ({"content-type": STRUCTURED}, b"{nope", "body is not JSON"),
        ({"content-type": STRUCTURED}, b"[1]", "a structured CloudEvent is a JSON object, not list"),
        (
            {"content-type": STRUCTURED},
            json.dumps({**EVENT, "type": ""}).encode(),
            "missing required attribute(s) type",
        ),
        ({"content-type": BATCH}, json.dumps(EVENT).encode(), "a batch is a JSON array of events, not dict"),
        ({"content-type": BATCH}, json.dumps([EVENT, {"id": "x"}]).encode(), "event 1: missing required"),
        ({"content-type": BATCH}, b"\xff\xfe", "body is not JSON"),
    ],
)
def test_parse_rejects_naming_the_problem(headers: dict[str, str], body: bytes, problem: str) -> None:
    with pytest.raises(MalformedEventError) as e:
        parse(headers, body)
    assert problem in str(e.value)


@given(
    strategies.dictionaries(
        strategies.sampled_from(["content-type", "ce-specversion", "ce-id", "ce-time"]), strategies.text()
    ),
    strategies.binary(),
)
@settings(max_examples=200)
def test_parse_never_fails_otherwise(headers: dict[str, str], body: bytes) -> None:
    """Whatever a client sends, the ingress either parses it or names the problem (never a 500)."""
    with contextlib.suppress(MalformedEventError):
        parse(headers, body)


def f(attribute: str, exact: str | None = None, prefix: str | None = None) -> Filter:
    return Filter(attribute=attribute, exact=exact, prefix=prefix)


@pytest.mark.parametrize(
    ("filters", "hit"),
    [
        ([], True),
        ([f("type", exact="order.created")], True),
        ([f("type", exact="order")], False),
        ([f("type", prefix="order.")], True),
        ([f("type", prefix="order."), f("source", exact="/shop")], True),
        ([f("type", prefix="order."), f("source", exact="/bank")], False),
        ([f("subject", prefix="cart-")], True),
        ([f("region", exact="eu")], False),  # an extension the event lacks
        ([f("tenant", exact="acme")], True),  # an extension it has
    ],
)
def test_filters(filters: list[Filter], hit: bool) -> None:
    (event,) = parse({"content-type": STRUCTURED}, json.dumps({**EVENT, "tenant": "acme"}).encode())
    assert matches(filters, event) is hit


@pytest.fixture
async def ingress_url(sink: Sink, dispatcher: Dispatcher) -> AsyncIterator[tuple[str, Ingress]]:
    ingress = Ingress(dispatcher)
    runner = web.AppRunner(ingress_app(ingress))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", ingress
    finally:
        await runner.cleanup()


async def test_each_matching_trigger_gets_the_event_in_binary_mode(
    ingress_url: tuple[str, Ingress], sink: Sink
) -> None:
    url, ingress = ingress_url
    by_subject = SessionFrom(source=SessionSource.ATTRIBUTE, name="subject")
    ingress.routes = (
        Route("shop", (f("type", prefix="order."),), make_target(sink, session=by_subject, name="shop/a/orders")),
        Route("shop", (f("type", exact="refund"),), make_target(sink, name="shop/b/refunds")),
        Route("other", (), make_target(sink, name="other/c/all")),  # another namespace: never
    )
    async with httpx.AsyncClient() as client:
        refund = {k: v for k, v in EVENT.items() if k != "subject"} | {"id": "e2", "type": "refund"}
        batch = [EVENT, refund]
        r = await client.post(f"{url}/events/shop", content=json.dumps(batch), headers={"content-type": BATCH})
    assert r.status_code == 200, r.text
    assert r.json() == {"events": 2, "deliveries": 2, "failed": []}
    got = {rec.headers["ce-id"]: rec.headers for rec in sink.received}
    assert sorted(got) == ["e1", "e2"]
    assert got["e1"]["ce-type"] == "order.created" and got["e1"]["X-Voltgrid-Session"] == "cart-7"
    assert "X-Voltgrid-Session" not in got["e2"]


async def test_failed_delivery_is_502_naming_the_trigger(ingress_url: tuple[str, Ingress], sink: Sink) -> None:
    url, ingress = ingress_url
    ingress.routes = (Route("shop", (), make_target(sink, max_retries=1, name="shop/a/orders")),)
    sink.always_fail.add("e1")
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{url}/events/shop", headers={**BINARY, "content-type": "application/json"}, content="{}"
        )
    assert r.status_code == 502
    assert r.json()["failed"] == ["shop/a/orders"]


@pytest.mark.parametrize(
    ("headers", "content", "problem"),
    [
        ({"content-type": "application/json"}, b"{}", "no ce-specversion header"),
        ({**BINARY, "ce-source": ""}, b"", "ce-source"),
        ({"content-type": STRUCTURED}, b"{nope", "body is not JSON"),
    ],
)
async def test_malformed_is_400_naming_the_problem(
    ingress_url: tuple[str, Ingress], sink: Sink, headers: dict[str, str], content: bytes, problem: str
) -> None:
    url, _ = ingress_url
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{url}/events/shop", headers=headers, content=content)
    assert r.status_code == 400
    assert problem in r.json()["error"]
    assert sink.received == []


OPERATOR = "operator-token-of-this-test"


@pytest.fixture
async def gateway_to(tmp_path: Path) -> AsyncIterator[Any]:
    """``await gateway_to(events_url)`` -> the base URL of a real gateway whose ingress passes to it."""
    servers: list[GatewayServer] = []

    async def start(events_url: str | None) -> str:
        port = free_port()
        settings = GatewaySettings(
            port=port, replica_url=f"http://127.0.0.1:{port}", api_tokens=[OPERATOR], events_url=events_url
        )
        server = GatewayServer(settings, LocalProcessBackend(tmp_path / "state", tmp_path / "storage"), [])
        await server.start("127.0.0.1", port)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop()


async def test_the_gateway_passes_events_to_the_ingress_and_its_answer_back(
    ingress_url: tuple[str, Ingress], sink: Sink, gateway_to: Any
) -> None:
    """Producers outside the cluster post to the gateway: binary and batch events reach the triggers,
    a malformed one gets the dispatcher's 400 naming the problem, and a credential is required."""
    url, ingress = ingress_url
    ingress.routes = (Route("shop", (f("type", prefix="order."),), make_target(sink, name="shop/a/orders")),)
    gateway = await gateway_to(url)
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    async with httpx.AsyncClient() as client:
        trace = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"  # the distributed-tracing extension
        binary = {**BINARY, "content-type": "application/json", "ce-traceparent": trace}
        r = await client.post(f"{gateway}/_voltgrid/v1/events/shop", headers={**binary, **auth}, content='{"n": 1}')
        assert r.status_code == 200 and r.json() == {"events": 1, "deliveries": 1, "failed": []}, r.text
        batch = json.dumps([EVENT | {"id": "e2"}, EVENT | {"id": "e3"}])
        r = await client.post(
            f"{gateway}/_voltgrid/v1/events/shop", headers={"content-type": BATCH, **auth}, content=batch
        )
        assert r.status_code == 200 and r.json()["deliveries"] == 2, r.text
        r = await client.post(
            f"{gateway}/_voltgrid/v1/events/shop", headers={"content-type": STRUCTURED, **auth}, content="{}"
        )
        assert r.status_code == 400 and "specversion" in r.text, r.text
        r = await client.post(f"{gateway}/_voltgrid/v1/events/shop", headers=binary, content="{}")
        assert r.status_code == 401
    received = {rec.headers["ce-id"]: rec for rec in sink.received}
    assert sorted(received) == ["e1", "e2", "e3"]
    assert received["e1"].body == b'{"n": 1}'  # the body, unchanged
    assert received["e1"].headers["traceparent"] == trace  # the producer's trace goes on to the Function


async def test_without_an_ingress_the_route_says_which_setting_is_missing(gateway_to: Any) -> None:
    gateway = await gateway_to(None)
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{gateway}/_voltgrid/v1/events/shop",
            headers={**BINARY, "Authorization": f"Bearer {OPERATOR}"},
            content="{}",
        )
    assert r.status_code == 404 and "events_url" in r.text
