"""Malformed and hostile requests get a 4xx, never a 500 or a hang (property-tested, raw sockets).

The gateway runs in a thread with a fake backend whose instances all point at an in-process
upstream, so thousands of requests take seconds. Requests are written as raw bytes: a client
library would refuse to send most of them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
from aiohttp import web
from gwhelpers import ADMIN_TOKEN, FakeBackend, free_port, function
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voltgrid.gateway.app import build_app
from voltgrid.gateway.settings import GatewaySettings, JwtPolicy

SECRET = "s3cret-key-for-tests-only-0123456789"
MAX_BODY = 1024 * 1024
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gateway() -> Iterator[int]:
    port = free_port()
    ready = threading.Event()
    stop: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        async def echo(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"ok": True})

        upstream_app = web.Application()
        upstream_app.router.add_route("*", "/{tail:.*}", echo)
        upstream = web.AppRunner(upstream_app)
        await upstream.setup()
        up_port = free_port()
        await web.TCPSite(upstream, "127.0.0.1", up_port).start()
        gw_settings = GatewaySettings(
            port=port,
            max_body_bytes=MAX_BODY,
            upstream_timeout=2,
            api_tokens=[ADMIN_TOKEN],
            jwt={
                "default/secured": JwtPolicy(
                    issuer="tests", audience="voltgrid", keys=[SECRET], required_scope="invoke"
                )
            },
        )
        backend = FakeBackend(f"http://127.0.0.1:{up_port}")
        app = build_app(gw_settings, backend, [function("open"), function("secured"), function("mcp", affinity="MCP")])
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        done = asyncio.Event()
        stop.append(asyncio.get_running_loop())
        stop_event.append(done)
        ready.set()
        await done.wait()
        await runner.cleanup()
        await upstream.cleanup()

    stop_event: list[asyncio.Event] = []
    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port
    stop[0].call_soon_threadsafe(stop_event[0].set)
    thread.join(10)


def raw(port: int, data: bytes, timeout: float = 5.0) -> int:
    """Send raw bytes, return the response status (fails the test on a hang)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        started = time.monotonic()
        response = b""
        while b"\r\n" not in response:
            chunk = s.recv(4096)
            if not chunk:
                break
            response += chunk
            assert time.monotonic() - started < timeout
    assert response.startswith(b"HTTP/1."), response[:100]  # the parser answers bad framing in HTTP/1.0
    return int(response[9:12])


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    lines = [f"GET {path} HTTP/1.1", "Host: gw", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)


@EXAMPLES
@given(session=header_text)
def test_any_session_header_is_accepted_or_refused_with_400(gateway: int, session: str) -> None:
    status = get(gateway, "/fn/default/open/x", {"X-Voltgrid-Session": session})
    assert status in (200, 400)


@EXAMPLES
@given(session=header_text)
def test_any_mcp_session_id_is_404_or_400(gateway: int, session: str) -> None:
    status = get(gateway, "/fn/default/mcp/mcp", {"Mcp-Session-Id": session})
    assert status in (200, 400, 404)  # empty means "new session" (200 from the fake upstream)


segment = st.sampled_from(["..", ".", "%2e%2e", "%2E.", "%00", "%2f", "%5c", "", "fn", "default", "open", "a", "~"])


@EXAMPLES
@given(parts=st.lists(st.one_of(segment, st.text("abc-._~%/", max_size=8)), max_size=8))
def test_path_tricks_never_reach_past_the_function(gateway: int, parts: list[str]) -> None:
    status = get(gateway, "/" + "/".join(parts))
    assert status < 500


@EXAMPLES
@given(
    token=st.one_of(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=400),
        st.builds(
            lambda p: jwt.encode(p, "wrong-key-0123456789-0123456789-01", algorithm="HS256"),
            st.fixed_dictionaries({"iss": st.text(max_size=5), "exp": st.integers(0, 2**40)}),
        ),
    )
)
def test_bad_tokens_get_401(gateway: int, token: str) -> None:
    assert get(gateway, "/fn/default/secured/x", {"Authorization": f"Bearer {token}"}) == 401


def test_jwt_valid_forbidden_and_missing(gateway: int) -> None:
    claims = {"iss": "tests", "aud": "voltgrid", "exp": int(time.time()) + 60}
    good = jwt.encode({**claims, "scope": "read invoke"}, SECRET, algorithm="HS256")
    no_scope = jwt.encode(claims, SECRET, algorithm="HS256")
    expired = jwt.encode({**claims, "exp": 1, "scope": "invoke"}, SECRET, algorithm="HS256")
    wrong_aud = jwt.encode({**claims, "aud": "other", "scope": "invoke"}, SECRET, algorithm="HS256")
    assert get(gateway, "/fn/default/secured/x", {"Authorization": f"Bearer {good}"}) == 200
    assert get(gateway, "/fn/default/secured/x", {"Authorization": f"Bearer {no_scope}"}) == 403
    assert get(gateway, "/fn/default/secured/x", {"Authorization": f"Bearer {expired}"}) == 401
    assert get(gateway, "/fn/default/secured/x", {"Authorization": f"Bearer {wrong_aud}"}) == 401
    assert get(gateway, "/fn/default/secured/x") == 401
    assert get(gateway, "/_voltgrid/v1/functions/default/secured/sessions") == 401  # Session API too
    assert get(gateway, "/_voltgrid/v1/functions/default/secured/sessions", {"Authorization": f"Bearer {good}"}) == 200


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", (400, 431)),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", (400, 414)),
        (
            b"GET /fn/default/open/x HTTP/1.1\r\nHost: gw\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
            + b"\r\n",
            (400, 431),
        ),
        (b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), (413,)),
        (b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: -5\r\n\r\n", (400,)),
        (b"GARBAGE\r\n\r\n", (400,)),
        (
            b"GET /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n0\r\n\r\n",
            (400,),
        ),
        (b"GET /fn/Default/../open/x HTTP/1.1\r\nHost: gw\r\n\r\n", (400,)),
        (b"GET /fn/default/nope/x HTTP/1.1\r\nHost: gw\r\n\r\n", (404,)),
        (
            b"POST /_voltgrid/v1/functions/default/open/sessions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n\r\n"
            b"{{{{{",
            (400,),
        ),
        (
            b"POST /_voltgrid/v1/functions/default/open/sessions HTTP/1.1\r\nHost: gw\r\nContent-Length: 24\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n\r\n"
            b'{"sessionId": "BAD_ID!"}',
            (400,),
        ),
        (b"POST /_voltgrid/internal/v1/bindings HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}", (403,)),
    ],
)
def test_malformed_requests(gateway: int, request_bytes: bytes, expected: tuple[int, ...]) -> None:
    assert raw(gateway, request_bytes) in expected


def test_chunked_body_over_the_limit_is_cut_off(gateway: int) -> None:
    with socket.create_connection(("127.0.0.1", gateway), timeout=5) as s:
        s.sendall(b"POST /fn/default/open/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"b" * 65536
        try:
            for _ in range(MAX_BODY // len(chunk) + 4):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway may close the connection as soon as the limit is crossed
        response = s.recv(4096)
    assert response == b"" or not response.startswith(b"HTTP/1.1 2")
