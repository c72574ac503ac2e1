"""Malformed and hostile requests get a 4xx, never a 500 or a hang (property-tested, raw sockets).

The gateway runs in a thread (:mod:`hostile`); requests are written as raw bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from gwhelpers import ADMIN_TOKEN
from hostile import MAX_BODY, SECRET, get, raw, threaded_gateway
from hypothesis import HealthCheck, given, settings, strategies

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gateway() -> Iterator[int]:
    with threaded_gateway() as gw:
        yield gw.port


header_text = strategies.text(
    strategies.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300
)


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


segment = strategies.sampled_from(
    ["..", ".", "%2e%2e", "%2E.", "%00", "%2f", "%5c", "", "fn", "default", "open", "a", "~"]
)


@EXAMPLES
@given(parts=strategies.lists(strategies.one_of(segment, strategies.text("abc-._~%/", max_size=8)), max_size=8))
def test_path_tricks_never_reach_past_the_function(gateway: int, parts: list[str]) -> None:
    status = get(gateway, "/" + "/".join(parts))
    assert status < 500


@EXAMPLES
@given(
    token=strategies.one_of(
        strategies.text(strategies.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=400),
        strategies.builds(
            lambda p: jwt.encode(p, "wrong-key-0123456789-0123456789-01", algorithm="HS256"),
            strategies.fixed_dictionaries({"iss": strategies.text(max_size=5), "exp": strategies.integers(0, 2**40)}),
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
