"""The request pipeline: small middlewares, each with one concern, outermost first.

1. :func:`errors` — every failure becomes a JSON error body; bad input never becomes a 500. A
   client that leaves mid-request or sends a broken body is one log line, without traceback; a
   backend (control-plane) failure the gateway can classify is a 503 + Retry-After or a 502.
2. :func:`limits` — refused early, on every route: declared body size, header values that are not
   UTF-8 (before anything reads them: tracing, auth, the internal token), path tricks (``..``,
   NUL, encoded dots) and WebSocket upgrades whose handshake is invalid (before any instance is
   placed or started).
3. :func:`tracing` — the request's span, continuing the caller's ``traceparent``.
4. :func:`route` — which function a path invokes (``/fn/<namespace>/<name>/...``, or the default).
5. :func:`auth` — the function's JWT policy.
6. :func:`affinity` — the request's session key.
7. :func:`ownership` — a request for a session owned by another replica goes there, in one hop.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from voltgrid.api import constants
from voltgrid.backends.base import BackendError, ControlPlaneUnavailableError
from voltgrid.gateway import tracing
from voltgrid.gateway.affinity import session_key
from voltgrid.gateway.core import GATEWAY
from voltgrid.gateway.errors import GatewayError, bad_request, error_response, not_found
from voltgrid.gateway.forward import forward, is_forwarded
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.gateway.websocket import is_websocket
from voltgrid.registry.ids import SESSION_ID_RE

logger = logging.getLogger(__name__)

INVOKE_ROUTE: Final = "invoke"
INVOKE_PREFIX: Final = constants.INVOKE_PATH_PREFIX
FUNCTION: Final = web.RequestKey("voltgrid.function", FunctionEntry)
TAIL: Final = web.RequestKey("voltgrid.tail", str)
PREFIX: Final = web.RequestKey("voltgrid.prefix", str)
KEY: Final = web.RequestKey("voltgrid.key", str)
CLAIMS: Final = web.RequestKey("voltgrid.claims", dict[str, Any])
_DOT_SEGMENT: Final = re.compile(r"(^|/)(\.|%2e){1,2}(/|$|\?)", re.IGNORECASE)
_FORBIDDEN_IN_PATH: Final = ("%00", "\x00", "%2f", "%5c", "\\")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason, _keep(e))
    except (ConnectionError, HttpProcessingError) as e:  # reading the client's body failed: its fault
        logger.info("client request %s %s ended early: %s", request.method, request.path, type(e).__name__)
        return error_response(400, "bad_body", f"the request body could not be read: {type(e).__name__}")
    except ControlPlaneUnavailableError as e:
        logger.warning("control plane unavailable for %s %s: %s", request.method, request.path, e)
        retry = {"Retry-After": str(request.app[GATEWAY].settings.retry_after)}
        return error_response(503, "control_plane_unavailable", str(e), retry)
    except BackendError as e:
        logger.warning("backend failed for %s %s: %s", request.method, request.path, e)
        return error_response(502, "backend_error", str(e))
    except Exception:
        logger.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(500, "internal", "the gateway failed unexpectedly; this is a bug")


def _keep(e: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}


@web.middleware
async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[GATEWAY].settings
    undecodable = _undecodable_header(request)
    if undecodable is not None:
        raise bad_request(f"header {undecodable!r} is not valid UTF-8", "bad_header")
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise GatewayError(413, "body_too_large", f"request body exceeds {settings.max_body_bytes} bytes")
    if is_websocket(request) and not web.WebSocketResponse().can_prepare(request).ok:
        raise bad_request(
            "invalid WebSocket handshake: it needs 'Connection: Upgrade', 'Sec-WebSocket-Version: 13'"
            " and a Sec-WebSocket-Key of 16 base64-encoded bytes",
            "bad_websocket_handshake",
        )
    path = request.raw_path.split("?", 1)[0]
    lowered = path.lower()
    if _DOT_SEGMENT.search(path) or any(bad in lowered for bad in _FORBIDDEN_IN_PATH) or "//" in path:
        raise bad_request("path contains '.', '..', '//', NUL or encoded separators", "bad_path")
    return await handler(request)


def _undecodable_header(request: web.Request) -> str | None:
    """The first header whose name or value holds bytes that are not UTF-8 (aiohttp keeps them as
    surrogate escapes, which every later ``encode()`` would fail on), printable; else None."""
    for name, value in request.headers.items():
        if not (name.isascii() and value.isascii()):
            try:
                name.encode()
                value.encode()
            except UnicodeEncodeError:
                return name.encode(errors="backslashreplace").decode("ascii", "replace")
    return None


@web.middleware
async def tracing_span(request: web.Request, handler: Handler) -> web.StreamResponse:
    span, token = tracing.start_server_span(request.method, request.path, request.headers)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except GatewayError as e:
        status = e.status
        raise
    finally:
        tracing.end_server_span(span, token, status)


@web.middleware
async def route(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.route.name != INVOKE_ROUTE:
        return await handler(request)
    gw = request.app[GATEWAY]
    raw = request.raw_path
    if raw.startswith(INVOKE_PREFIX):
        parts = raw.split("/", 4)
        if len(parts) < 4:
            raise not_found("invoke URLs are /fn/<namespace>/<name>/<path>", "function_not_found")
        namespace, name = parts[2], parts[3].split("?", 1)[0]
        if not SESSION_ID_RE.match(namespace) or not SESSION_ID_RE.match(name):
            raise not_found("invoke URLs are /fn/<namespace>/<name>/<path>", "function_not_found")
        rest = raw[len(INVOKE_PREFIX) + len(namespace) + 1 + len(name) :]
        fn = gw.catalog.get(f"{namespace}/{name}")
        prefix = f"{INVOKE_PREFIX}{namespace}/{name}"
        tail = rest if rest.startswith("/") else "/" + rest
    elif gw.settings.default_function:
        fn, prefix, tail = gw.catalog.get(gw.settings.default_function), "", raw
    else:
        raise not_found("no function at this path; invoke URLs are /fn/<namespace>/<name>/", "function_not_found")
    if fn is None:
        raise not_found("no such function is served here", "function_not_found")
    request[FUNCTION] = fn
    request[PREFIX] = prefix
    request[TAIL] = tail
    return await handler(request)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    fn = request.get(FUNCTION)
    if fn is not None and fn.verifier is not None:
        request[CLAIMS] = fn.verifier.verify(request.headers.get("Authorization"))
    return await handler(request)


@web.middleware
async def affinity(request: web.Request, handler: Handler) -> web.StreamResponse:
    fn = request.get(FUNCTION)
    if fn is not None:
        key = session_key(fn, request)
        if key is not None:
            if len(key) > 256 or not key.isprintable() or not key.isascii():
                raise bad_request("malformed session id", "bad_session_id")
            request[KEY] = key
    return await handler(request)


@web.middleware
async def ownership(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.get(KEY)
    if key is None:
        return await handler(request)
    gw = request.app[GATEWAY]
    if is_forwarded(request, gw.settings.internal_token) or gw.membership.is_owner(key):
        return await handler(request)
    return await forward(request, key, handler)


PIPELINE: Final = (errors, limits, tracing_span, route, auth, affinity, ownership)
