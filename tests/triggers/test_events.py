"""Pure builders of a delivery: the invoke URL, the session key, the affinity headers, binary mode."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event
from hypothesis import given, strategies

from voltgrid.api.function import SessionPolicy
from voltgrid.api.triggers import SessionFrom, SessionSource
from voltgrid.triggers.events import (
    HASHED_KEY_PREFIX,
    Message,
    affinity_headers,
    delivery,
    invoke_url,
    message_event,
    session_key,
    usable_key,
)

MSG = Message(id="7", body=b"hi", headers={"conversation": "c-42", "empty": ""}, key="orders.eu")
ATTRS = {"id": "7", "subject": "user-9", "sessionid": "s-1"}


@pytest.mark.parametrize(
    ("source", "name", "message", "expected"),
    [
        (SessionSource.HEADER, "conversation", MSG, "c-42"),
        (SessionSource.HEADER, "missing", MSG, None),
        (SessionSource.HEADER, "empty", MSG, None),
        (SessionSource.KEY, None, MSG, "orders.eu"),
        (SessionSource.ATTRIBUTE, "subject", None, "user-9"),
        (SessionSource.ATTRIBUTE, "sessionid", None, "s-1"),  # an extension attribute
        (SessionSource.ATTRIBUTE, "dataschema", None, None),
        (SessionSource.FIXED, "nightly", None, "nightly"),
        (SessionSource.HEADER, "conversation", None, None),  # a header needs a message
    ],
)
def test_session_key(source: SessionSource, name: str | None, message: Message | None, expected: str | None) -> None:
    assert session_key(SessionFrom(source=source, name=name), ATTRS, message) == expected


def test_no_session_source_is_session_less() -> None:
    assert session_key(None, ATTRS, MSG) is None


@pytest.mark.parametrize(
    ("value", "kept"), [("c-42", True), ("a" * 256, True), ("a" * 257, False), ("é", False), ("a\nb", False)]
)
def test_usable_key_hashes_what_the_gateway_would_refuse(value: str, kept: bool) -> None:
    key = usable_key(value)
    assert (key == value) is kept
    if not kept:
        assert key.startswith(HASHED_KEY_PREFIX) and len(key) == len(HASHED_KEY_PREFIX) + 40


@given(strategies.text(min_size=1, max_size=400))
def test_usable_key_is_stable_and_acceptable(value: str) -> None:
    key = usable_key(value)
    assert key == usable_key(value)
    assert len(key) <= 256 and key.isascii() and key.isprintable()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, {"X-Voltgrid-Session": "k"}),
        ({"header": "X-Conversation"}, {"X-Conversation": "k"}),
        ({"affinity": "Cookie", "cookie": "sid"}, {"Cookie": "sid=k"}),
        ({"affinity": "MCP"}, {"Mcp-Session-Id": "k"}),
        ({"affinity": "A2A"}, {}),
        ({"affinity": "None"}, {}),
    ],
)
def test_affinity_headers(policy: dict[str, Any], expected: dict[str, str]) -> None:
    assert affinity_headers(SessionPolicy.model_validate(policy), "k") == expected


@pytest.mark.parametrize(
    ("gateway", "path", "url"),
    [
        ("http://gw:8080", "/", "http://gw:8080/fn/ns/echo/"),
        ("http://gw:8080/", "/hooks/order", "http://gw:8080/fn/ns/echo/hooks/order"),
        ("http://gw", "/a b", "http://gw/fn/ns/echo/a%20b"),
    ],
)
def test_invoke_url(gateway: str, path: str, url: str) -> None:
    assert invoke_url(gateway, "ns", "echo", path) == url


def test_delivery_is_binary_mode_and_carries_traceparent() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    message = Message(id="m", body=b"\x00raw", headers={"traceparent": tp}, key=None, content_type=None)
    event = message_event(message, source="/src", event_type="t")
    d = delivery("http://gw/fn/ns/echo/", event, SessionPolicy(), "k")
    assert d.body == b"\x00raw"  # the payload itself, not a JSON envelope
    assert d.headers["traceparent"] == tp and d.headers["X-Voltgrid-Session"] == "k"
    back = from_binary_event(HTTPMessage({k.lower(): v for k, v in d.headers.items()}, d.body))
    assert (back.get_id(), back.get_source(), back.get_type()) == ("m", "/src", "t")
    assert back.get_extension("traceparent") == tp
