"""The Session API: REST/JSON sessions of a function, with their metered usage.

``/_voltgrid/v1/functions/{namespace}/{name}/sessions``: POST creates (optionally with
``sessionId``, ``idleTimeout``, ``maxLifetime``), GET lists (every replica's sessions);
``.../sessions/{id}``: GET shows, DELETE ends (preStop, release, forget); ``.../{id}/renew``: POST
resets the idle timer and extends the lifetime by ``maxLifetime`` from now. Requests for one session
are served by its owning replica (one internal hop). Every route needs a credential, for every
Function: an operator API token (every session) or a token of the JWT policy (the caller's own
sessions only); see :mod:`voltgrid.gateway.access`. A session id is scoped to its Function.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from aiohttp import web

from voltgrid.api.common import parse_duration
from voltgrid.api.constants import MAX_LIFETIME_CEILING
from voltgrid.gateway.access import Caller, session_api_caller
from voltgrid.gateway.core import GATEWAY, Gateway
from voltgrid.gateway.errors import GatewayError, bad_request, not_found
from voltgrid.gateway.forward import is_forwarded
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.gateway.peers import FORWARDED_HEADER
from voltgrid.gateway.proxy import HOP_BY_HOP
from voltgrid.registry.ids import is_session_id
from voltgrid.registry.records import STATE_NAMES, SessionRecord, usage
from voltgrid.registry.store import SessionExistsError

API_PREFIX: Final = "/_voltgrid/v1/functions/{namespace}/{name}/sessions"
MAX_API_BODY: Final = 64 * 1024
#: Headers of an owner's answer passed back to the client.
_ANSWER_HEADERS: Final = frozenset({"content-type", "retry-after", "www-authenticate", "allow"})


def session_json(gw: Gateway, record: SessionRecord) -> dict[str, Any]:
    now = gw.manager.now()
    wall = time.time() - now

    def ts(t: float) -> str:
        return datetime.fromtimestamp(wall + t, UTC).isoformat().replace("+00:00", "Z")

    return {
        "sessionId": record.key,
        "storageId": record.storage_id,
        "function": record.function,
        "state": STATE_NAMES[record.state],
        "instance": record.instance,
        "inFlight": record.inflight,
        "createdAt": ts(record.created),
        "lastActivity": ts(record.last_active),
        "expiresAt": ts(record.expires_at),
        "idleTimeoutSeconds": record.idle_timeout,
        "usage": usage(record, now),
    }


def _function(request: web.Request) -> tuple[Gateway, FunctionEntry, Caller]:
    gw = request.app[GATEWAY]
    fn = gw.catalog.get(f"{request.match_info['namespace']}/{request.match_info['name']}")
    authorization = request.headers.get("Authorization")
    if fn is None:  # what is served is no secret: an invoke URL says as much
        raise not_found("no such function is served here", "function_not_found")
    return gw, fn, session_api_caller(authorization, gw.api_tokens, gw.api_verifier or fn.verifier)


def _session(gw: Gateway, fn: FunctionEntry, session_id: str, caller: Caller) -> SessionRecord:
    record = gw.manager.registry.find(fn.key, session_id)
    if record is None or not caller.may_see(record.principal):
        raise not_found(f"session {session_id!r} not found", "session_not_found")
    return record


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    if (request.content_length or 0) > MAX_API_BODY:
        raise GatewayError(413, "body_too_large", f"Session API bodies are at most {MAX_API_BODY} bytes")
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _seconds(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        seconds = parse_duration(value).total_seconds() if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError) as e:  # OverflowError: a JSON integer beyond a float
        raise bad_request(f"{name}: {e}") from None
    if not 0 < seconds <= parse_duration(MAX_LIFETIME_CEILING).total_seconds():
        raise bad_request(f"{name} must be positive and at most {MAX_LIFETIME_CEILING}")
    return seconds


async def _owned(request: web.Request, session_id: str) -> web.StreamResponse | None:
    """The owner's answer, unless this replica owns ``session_id`` (or the request was forwarded,
    or no other owner can be reached): then None, and the request is served here."""
    gw = request.app[GATEWAY]
    settings = gw.settings
    if is_forwarded(request.headers, settings.internal_token):
        return None
    assert gw.http is not None
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers[FORWARDED_HEADER] = settings.internal_token
    for _ in range(len(gw.membership.members)):
        owner = gw.membership.owner(session_id)
        if owner == gw.membership.self_id:
            return None
        try:
            async with (
                asyncio.timeout(settings.upstream_timeout + settings.cold_start_timeout),
                gw.http.request(
                    request.method,
                    owner + request.raw_path,
                    headers=headers,
                    data=body,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.forward_connect_timeout),
                ) as answer,
            ):
                kept = {k: v for k, v in answer.headers.items() if k.lower() in _ANSWER_HEADERS}
                return web.Response(status=answer.status, body=await answer.read(), headers=kept)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            gw.metrics.forwarded.labels("owner_unreachable").inc()
            gw.membership.suspect(owner)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise GatewayError(502, "owner_failed", f"the replica owning the session failed: {e}") from None
    return None


async def create(request: web.Request) -> web.StreamResponse:
    gw, fn, caller = _function(request)
    body = await _body(request)
    session_id = body.get("sessionId")
    if session_id is not None:
        if not isinstance(session_id, str) or not is_session_id(session_id):
            raise bad_request(
                "sessionId must be a DNS label (lowercase letters, digits, '-', at most 63)", "bad_session_id"
            )
        forwarded = await _owned(request, session_id)
        if forwarded is not None:
            return forwarded
    idle, lifetime = _seconds(body, "idleTimeout"), _seconds(body, "maxLifetime")
    if caller.principal is not None:  # operators are not limited
        gw.mint_limiter.take(fn.key, caller.principal)
    try:
        if session_id is None:
            record = await gw.manager.new_session(fn)
            if idle is not None or lifetime is not None:
                now = gw.manager.now()
                record.idle_timeout = idle or record.idle_timeout
                record.expires_at = now + (lifetime or fn.max_lifetime)
        else:
            record = gw.manager.create_session(fn, session_id, idle_timeout=idle, max_lifetime=lifetime)
    except SessionExistsError:
        raise GatewayError(409, "session_exists", f"session {session_id!r} already exists") from None
    record.principal = caller.principal
    return web.json_response(session_json(gw, record), status=201)


async def get(request: web.Request) -> web.StreamResponse:
    gw, fn, caller = _function(request)
    session_id = request.match_info["session_id"]
    forwarded = await _owned(request, session_id)
    if forwarded is not None:
        return forwarded
    return web.json_response(session_json(gw, _session(gw, fn, session_id, caller)))


async def renew(request: web.Request) -> web.StreamResponse:
    gw, fn, caller = _function(request)
    session_id = request.match_info["session_id"]
    forwarded = await _owned(request, session_id)
    if forwarded is not None:
        return forwarded
    record = _session(gw, fn, session_id, caller)
    body = await _body(request)
    now = gw.manager.now()
    record.last_active = now
    record.expires_at = now + (_seconds(body, "maxLifetime") or fn.max_lifetime)
    gw.manager.schedule(record.rkey, record.due())
    assert gw.lifecycle is not None
    gw.lifecycle.push_backup(record)  # the runner-up's copy must not expire before the session
    return web.json_response(session_json(gw, record))


async def delete(request: web.Request) -> web.StreamResponse:
    gw, fn, caller = _function(request)
    session_id = request.match_info["session_id"]
    forwarded = await _owned(request, session_id)
    if forwarded is not None:
        return forwarded
    record = _session(gw, fn, session_id, caller)
    assert gw.lifecycle is not None
    await gw.lifecycle.end_session(record, "deleted")
    return web.json_response(session_json(gw, record))


async def list_sessions(request: web.Request) -> web.StreamResponse:
    gw, fn, caller = _function(request)
    assert gw.peers is not None
    items = local_sessions(gw, fn.key, caller)
    items += await gw.peers.list_sessions(fn.key, caller.principal)
    return web.json_response({"function": fn.key, "items": sorted(items, key=lambda i: i["sessionId"])})


def local_sessions(gw: Gateway, function: str, caller: Caller) -> list[dict[str, Any]]:
    """Sessions of ``function`` that this replica owns and ``caller`` may see (a record held here
    only until its hand-off to the owner completes is the owner's to list)."""
    owns = gw.membership.is_owner
    return [
        session_json(gw, r)
        for r in gw.manager.registry.by_function(function)
        if owns(r.key) and caller.may_see(r.principal)
    ]


def add_routes(app: web.Application) -> None:
    app.router.add_post(API_PREFIX, create)
    app.router.add_get(API_PREFIX, list_sessions)
    app.router.add_get(API_PREFIX + "/{session_id}", get)
    app.router.add_delete(API_PREFIX + "/{session_id}", delete)
    app.router.add_post(API_PREFIX + "/{session_id}/renew", renew)
