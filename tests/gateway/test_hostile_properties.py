"""Hostile input as properties: bytes that are not UTF-8 in any header the gateway reads, durations up
to 10^20 hours, malformed WebSocket upgrades. Every answer is a 4xx (or a success), never a 5xx.

About 2,400 examples in all, each a raw request to a gateway in a thread (:mod:`hostile`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from gwhelpers import ADMIN_TOKEN
from hostile import HostileGateway, raw, request_bytes, threaded_gateway
from hypothesis import HealthCheck, given, settings, strategies
from pydantic import ValidationError

from voltgrid.api.function import Function


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gateway() -> Iterator[HostileGateway]:
    with threaded_gateway() as gw:
        yield gw


#: Every header some part of the gateway reads (tracing, auth, affinity, replicas, WebSocket, relay).
READ_HEADERS = [
    b"baggage",
    b"traceparent",
    b"tracestate",
    b"X-Voltgrid-Forwarded",
    b"X-Voltgrid-Internal-Token",
    b"Authorization",
    b"X-Voltgrid-Session",
    b"Mcp-Session-Id",
    b"Cookie",
    b"Connection",
    b"Upgrade",
    b"Sec-WebSocket-Key",
    b"Sec-WebSocket-Version",
    b"Sec-WebSocket-Protocol",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"X-Forwarded-Host",
    b"Content-Type",
    b"Accept",
    b"X-Anything-Relayed",
]
ROUTES = [
    "/_voltgrid/healthz",
    "/_voltgrid/metrics",
    "/_voltgrid/internal/v1/sessions",
    "/_voltgrid/v1/functions/default/open/sessions",
    "/_voltgrid/v1/functions/default/secured/sessions",
    "/fn/default/open/x",
    "/fn/default/secured/x",
    "/fn/default/mcp/mcp",
]
ascii_text = strategies.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F))
#: Bytes that are never UTF-8 between ASCII: 0xC0, 0xC1, 0xF5-0xFF, a lone continuation byte, a
#: truncated sequence.
never_utf8 = strategies.sampled_from(
    [b"\xff", b"\xfe", b"\xc0", b"\xc1", b"\xf5", b"\x80", b"\xbf", b"\xe9 ", b"\xe2\x82"]
)
header_bytes = strategies.binary(min_size=1, max_size=40).map(
    lambda b: bytes(c for c in b if 0x20 <= c < 0x7F or c >= 0x80)
)


def is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


@examples(1200)
@given(
    name=strategies.sampled_from(READ_HEADERS),
    route=strategies.sampled_from(ROUTES),
    method=strategies.sampled_from(["GET", "POST", "DELETE"]),
    value=strategies.one_of(
        strategies.tuples(ascii_text, never_utf8, ascii_text).map(lambda parts: b"".join(parts).strip() or parts[1]),
        header_bytes.map(bytes.strip).filter(bool),
    ),
)
def test_a_header_that_is_not_utf8_is_400_on_any_route(
    gateway: HostileGateway, name: bytes, route: str, method: str, value: bytes
) -> None:
    status = raw(gateway.port, request_bytes(method, route, [(name, value)]))
    assert status == 400 if not is_utf8(value) else status < 500


hours = strategies.one_of(strategies.integers(0, 10**20), strategies.floats(0, 1e20, allow_nan=False))
duration_text = strategies.builds(
    lambda n, unit: f"{n}{unit}", strategies.integers(0, 10**20), strategies.sampled_from(["h", "m", "s", "ms"])
)
duration_value = strategies.one_of(duration_text, hours.map(lambda h: h * 3600), strategies.integers(0, 10**400))


@examples(500)
@given(field=strategies.sampled_from(["maxLifetime", "idleTimeout"]), value=duration_value)
def test_session_api_durations_up_to_1e20_hours_are_201_or_400(
    gateway: HostileGateway, field: str, value: object
) -> None:
    body = json.dumps({field: value}).encode()
    token = [(b"Authorization", f"Bearer {ADMIN_TOKEN}".encode())]  # the Session API needs a credential
    status = raw(gateway.port, request_bytes("POST", "/_voltgrid/v1/functions/default/open/sessions", token, body))
    assert status in (201, 400)


@examples(300)
@given(field=strategies.sampled_from(["idleTimeout", "maxLifetime"]), value=duration_text)
def test_function_durations_up_to_1e20_hours_validate_or_fail_cleanly(field: str, value: str) -> None:
    spec = {"image": "x", "sessions": {field: value}}
    try:
        Function.model_validate({"metadata": {"name": "f", "namespace": "default"}, "spec": spec})
    except ValidationError as e:
        assert field in str(e)


KEY = base64.b64encode(b"0123456789abcdef").decode()
handshake_defect = strategies.sampled_from(
    ["no-key", "short-key", "long-key", "not-base64", "no-version", "version", "conn"]
)


@examples(400)
@given(
    defects=strategies.sets(handshake_defect, min_size=1),
    junk=strategies.text(strategies.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
    route=strategies.sampled_from(["/fn/default/open/ws", "/fn/default/mcp/ws", "/fn/default/open/"]),
)
def test_a_malformed_websocket_upgrade_is_400_before_any_instance(
    gateway: HostileGateway, defects: set[str], junk: str, route: str
) -> None:
    key = {
        "short-key": base64.b64encode(b"short").decode(),
        "long-key": base64.b64encode(b"0123456789abcdef0").decode(),
        "not-base64": "!!" + junk[:10],  # decodes (leniently) to fewer than 16 bytes
    }
    headers = [(b"Upgrade", b"websocket"), (b"Connection", b"keep-alive" if "conn" in defects else b"Upgrade")]
    chosen = next((key[d] for d in ("short-key", "long-key", "not-base64") if d in defects), KEY)
    if "no-key" not in defects:
        headers.append((b"Sec-WebSocket-Key", chosen.encode()))
    if "no-version" not in defects:
        bad_version = junk if junk not in ("13", "8", "7") else "12"
        headers.append((b"Sec-WebSocket-Version", (bad_version or "12").encode() if "version" in defects else b"13"))
    created, hits = len(gateway.backend.created), len(gateway.upstream_hits)
    assert raw(gateway.port, request_bytes("GET", route, headers)) == 400
    assert (len(gateway.backend.created), len(gateway.upstream_hits)) == (created, hits)
