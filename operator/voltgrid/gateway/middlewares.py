"""The request pipeline: small middlewares, each with one concern, outermost first.

1. :func:`errors` — every failure becomes a JSON error body; bad input never becomes a 500.
2. :func:`limits` — declared body size and path tricks (``..``, NUL, encoded dots) refused early.
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
from aiohttp.typedefs import Handler

from voltgrid.api import constants as c
from voltgrid.gateway import tracing
from voltgrid.gateway.affinity import session_key
from voltgrid.gateway.core import GATEWAY
from voltgrid.gateway.errors import GatewayError, bad_request, error_response, not_found
from voltgrid.gateway.forward import forward, is_forwarded
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.registry.ids import SESSION_ID_RE

logger = logging.getLogger(__name__)

INVOKE_ROUTE: Final = "invoke"
INVOKE_PREFIX: Final = c.INVOKE_PATH_PREFIX
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
    except Exception:
        logger.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(500, "internal", "the gateway failed unexpectedly; this is a bug")


def _keep(e: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}


@web.middleware
async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[GATEWAY].settings
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise GatewayError(413, "body_too_large", f"request body exceeds {settings.max_body_bytes} bytes")
    path = request.raw_path.split("?", 1)[0]
    lowered = path.lower()
    if _DOT_SEGMENT.search(path) or any(bad in lowered for bad in _FORBIDDEN_IN_PATH) or "//" in path:
        raise bad_request("path contains '.', '..', '//', NUL or encoded separators", "bad_path")
    return await handler(request)


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
