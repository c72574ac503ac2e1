"""The request pipeline: small steps, each with one concern, in order.

1. :func:`answer_failure` — every failure becomes a JSON error body; bad input never becomes a 500. A
   client that leaves mid-request or sends a broken body is one log line, without traceback; a
   backend (control-plane) failure the gateway can classify is a 503 + Retry-After or a 502.
2. :func:`check_limits` — refused early, on every route: declared body size, path tricks (``..``,
   NUL, encoded dots) and WebSocket upgrades whose handshake is invalid (before any instance is
   placed or started). Header values that are not UTF-8 are refused by the connection itself.
3. tracing — the request's span, continuing the caller's ``traceparent``.
4. :func:`route` — ``/_voltgrid/...`` goes to the admin application (Session API, internal calls,
   health, metrics); any other path invokes a function (``/fn/<namespace>/<name>/...``, or the default).
5. :func:`authenticate` — the function's JWT policy.
6. :func:`affinity` — the request's session key.
7. ownership — a request for a session owned by another replica goes there, in one hop
   (:mod:`voltgrid.gateway.forward`); else it is invoked here (:mod:`voltgrid.gateway.invoke`).

Every step runs for every request: there is no fast path that skips one.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from voltgrid.api import constants
from voltgrid.api.function import Affinity
from voltgrid.backends.base import BackendError, ControlPlaneUnavailableError
from voltgrid.gateway import a2a, tracing
from voltgrid.gateway.affinity import session_key
from voltgrid.gateway.core import Gateway
from voltgrid.gateway.errors import GatewayError, bad_request, error_body, not_found
from voltgrid.gateway.forward import forward, is_forwarded
from voltgrid.gateway.http1 import ClientGoneError, Request
from voltgrid.gateway.invoke import invoke
from voltgrid.gateway.proxy import HOP_BY_HOP, Target, Traffic, relay
from voltgrid.gateway.websocket import check_handshake, is_websocket
from voltgrid.registry.ids import SESSION_ID_RE

logger = logging.getLogger(__name__)

INVOKE_PREFIX: Final = constants.INVOKE_PATH_PREFIX
#: Paths served by the admin application (aiohttp): the Session API, internal calls, health, metrics.
ADMIN_PREFIX: Final = "/_voltgrid/"
#: The Sandbox API's calls to a sandbox's agent (files may exceed ``max_body_bytes``).
SANDBOX_PREFIX: Final = "/_voltgrid/v1/sandboxes/"
_DOT_SEGMENT: Final = re.compile(r"(^|/)(\.|%2e){1,2}(/|$|\?)", re.IGNORECASE)
_FORBIDDEN_IN_PATH: Final = ("%00", "\x00", "%2f", "%5c", "\\")
_JSON: Final = [(b"content-type", b"application/json")]


class Pipeline:
    """The connection handler of one gateway: ``await pipeline(request)`` answers the request."""

    def __init__(self, gateway: Gateway, admin: Target) -> None:
        self.gateway = gateway
        self.admin = admin

    async def __call__(self, request: Request) -> None:
        gw = self.gateway
        try:
            check_limits(gw, request)
        except GatewayError as e:
            answer_error(request, e.status, e.code, e.message, e.headers)
            return
        if not tracing.enabled():
            try:
                await self._dispatch(request)
            except Exception as e:
                answer_failure(gw, request, e)
            return
        span, token = tracing.start_server_span(request.method, request.path, request.headers)
        try:
            await self._dispatch(request)
        except Exception as e:
            answer_failure(gw, request, e)
        finally:
            tracing.end_server_span(span, token, request.status or 500)

    async def _dispatch(self, request: Request) -> None:
        gw = self.gateway
        if request.path.startswith(ADMIN_PREFIX):
            await self._admin(request)
            return
        route(gw, request)
        authenticate(request)
        fn = request.function
        if fn is not None and fn.affinity is Affinity.A2A:
            if not await a2a_affinity(gw, request):
                return
        else:
            affinity(request)
        key = request.key
        if (
            key is None
            or is_forwarded(request.headers, gw.settings.internal_token)
            or gw.membership.is_owner(key)
            or not await forward(gw, request, key)
        ):
            await invoke(gw, request)

    async def _admin(self, request: Request) -> None:
        """The admin application answers on a private unix socket; its headers pass as they are."""
        headers = [(n, v) for n, v in request.headers.items() if n.lower() not in _ADMIN_DROP]
        settings = self.gateway.settings
        await relay(
            self.gateway.pool,
            request,
            self.admin,
            request.raw_path,
            headers,
            traffic=Traffic(),
            max_body=body_limit(self.gateway, request.path),
            # A sandbox answers an upload once it has it all, an execution at its first event: the
            # agent's own timeouts (execution, idle body) bound those, not the instance head timeout.
            header_timeout=(
                settings.max_stream_duration if request.path.startswith(SANDBOX_PREFIX) else settings.upstream_timeout
            ),
            max_stream=settings.max_stream_duration,
        )


#: Headers not passed to the admin application: framing and hop-by-hop, except the internal token
#: and the forwarding mark, which the internal calls check themselves.
_ADMIN_DROP: Final = HOP_BY_HOP - {"x-voltgrid-internal-token", "x-voltgrid-forwarded"}


def answer_failure(gw: Gateway, request: Request, error: Exception) -> None:
    """Answer the failure of a request's steps (see the module docstring); called in the ``except``
    clause (so a traceback is logged for a bug), not as a wrapper coroutine around the steps: that
    would be one more frame on the path each resumption of every request walks."""
    if isinstance(error, GatewayError):
        answer_error(request, error.status, error.code, error.message, error.headers)
    elif isinstance(error, ClientGoneError):
        logger.info("client request %s %s ended early: %s", request.method, request.path, error)
    elif isinstance(error, ControlPlaneUnavailableError):
        logger.warning("control plane unavailable for %s %s: %s", request.method, request.path, error)
        retry = {"Retry-After": str(gw.settings.retry_after)}
        answer_error(request, 503, "control_plane_unavailable", str(error), retry)
    elif isinstance(error, BackendError):
        logger.warning("backend failed for %s %s: %s", request.method, request.path, error)
        answer_error(request, 502, "backend_error", str(error))
    else:
        logger.exception("unexpected error handling %s %s", request.method, request.path)
        answer_error(request, 500, "internal", "the gateway failed unexpectedly; this is a bug")


def answer_error(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    """A JSON error answer; a stream already under way is cut instead (the client sees it truncated)."""
    conn = request.conn
    if conn.headers_sent:
        conn.abort()
        return
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    conn.send_response(request, status, _JSON + extra, error_body(code, message))


def body_limit(gw: Gateway, path: str) -> int:
    """The largest body a request may stream: a sandbox's file uploads have their own limit."""
    settings = gw.settings
    return settings.sandbox_max_upload_bytes if path.startswith(SANDBOX_PREFIX) else settings.max_body_bytes


def check_limits(gw: Gateway, request: Request) -> None:
    length = request.body.length
    limit = body_limit(gw, request.path)
    if length is not None and length > limit:
        raise GatewayError(413, "body_too_large", f"request body exceeds {limit} bytes")
    if is_websocket(request):
        check_handshake(request)
    path = request.path
    if "." in path or "%" in path or "\\" in path or "\x00" in path or "//" in path:  # else nothing to look for
        lowered = path.lower()
        if _DOT_SEGMENT.search(path) or any(bad in lowered for bad in _FORBIDDEN_IN_PATH) or "//" in path:
            raise bad_request("path contains '.', '..', '//', NUL or encoded separators", "bad_path")
    if not path.startswith("/"):
        raise bad_request("the request target must be a path", "bad_path")


def route(gw: Gateway, request: Request) -> None:
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
    request.function = fn
    request.prefix = prefix
    request.tail = tail


def authenticate(request: Request) -> None:
    fn = request.function
    if fn is not None and fn.verifier is not None:
        request.claims = fn.verifier.verify(request.headers.get("Authorization"))


async def a2a_affinity(gw: Gateway, request: Request) -> bool:
    """An A2A request's session key, read from its JSON-RPC body (:mod:`voltgrid.gateway.a2a`): its
    context, or the context its task was seen in (here, else on another replica). False when the
    request was answered here: a task no replica knows is A2A's "task not found" (-32001)."""
    fn = request.function
    assert fn is not None
    if request.method != "POST":
        return True  # the agent card and other reads: no conversation (request.a2a stays None)
    routing = a2a.request_routing(await request.body.read_all(gw.settings.max_body_bytes))
    request.a2a = routing
    key = routing.context_id
    if key is None and routing.task_id is not None:
        key = gw.task_contexts(fn.key).context_of(routing.task_id)
        if key is None and gw.peers is not None:
            key = await gw.peers.a2a_context(fn.key, routing.task_id)
        if key is None:
            body = a2a.jsonrpc_error_body(None, a2a.TASK_NOT_FOUND, f"task {routing.task_id!r} not found")
            request.conn.send_response(request, 200, _JSON, body)
            return False
    request.key = key
    return True


def affinity(request: Request) -> None:
    fn = request.function
    if fn is not None:
        key = session_key(fn, request)
        if key is not None:
            if len(key) > 256 or not key.isprintable() or not key.isascii():
                raise bad_request("malformed session id", "bad_session_id")
            request.key = key
