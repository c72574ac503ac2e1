"""Endpoints for replicas and operators: hand-off, touch, end, budgets, listing, health, metrics.

The ``/_voltgrid/internal/`` endpoints answer only requests that carry the shared internal token.
``/_voltgrid/healthz`` says the process serves (liveness); ``/_voltgrid/readyz`` also says it can
route: it answers 503 until the cluster's Function catalog has been listed once, so that a new
replica gets no traffic it would answer 404 "no such function".
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voltgrid.gateway.access import Caller
from voltgrid.gateway.budget import instance_json, instance_of
from voltgrid.gateway.core import GATEWAY
from voltgrid.gateway.errors import GatewayError, bad_request
from voltgrid.gateway.peers import INTERNAL_PREFIX, INTERNAL_TOKEN_HEADER
from voltgrid.gateway.session_api import local_sessions


def _internal(request: web.Request) -> None:
    token = request.headers.get(INTERNAL_TOKEN_HEADER, "")
    if not hmac.compare_digest(token.encode(), request.app[GATEWAY].settings.internal_token.encode()):
        raise GatewayError(403, "forbidden", "internal endpoint")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


async def bindings(request: web.Request) -> web.StreamResponse:
    _internal(request)
    gw = request.app[GATEWAY]
    assert gw.lifecycle is not None
    body = await _json(request)
    items = body.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad_request("items must be a list of bindings")
    try:
        for item in items:
            gw.lifecycle.accept_binding(item)
    except (KeyError, TypeError, ValueError) as e:
        raise bad_request(f"bad binding: {e}") from None
    return web.json_response({"ok": True})


async def end(request: web.Request) -> web.StreamResponse:
    """A replica that saw a session end (its legacy SSE stream closed) asks the owner to end it."""
    _internal(request)
    gw = request.app[GATEWAY]
    assert gw.lifecycle is not None
    body = await _json(request)
    key, reason, function = body.get("key"), body.get("reason"), body.get("function")
    if not isinstance(key, str) or not isinstance(reason, str) or not isinstance(function, str):
        raise bad_request("function, key and reason must be strings")
    record = gw.manager.registry.find(function, key)
    if record is not None:
        await gw.lifecycle.end_session(record, reason)
    return web.json_response({"ok": record is not None})


async def budget(request: web.Request) -> web.StreamResponse:
    """The Function's budget, asked by another replica (this one is its owner)."""
    _internal(request)
    budgets = request.app[GATEWAY].manager.budget
    body = await _json(request)
    op, function = request.match_info["op"], body.get("function")
    if not isinstance(function, str):
        raise bad_request("function must be a string")
    try:
        if op == "acquire":
            grant = await budgets.serve_acquire(function)
            if grant.instance is not None:
                return web.json_response({"instance": instance_json(grant.instance)})
            return web.json_response({"slot": grant.slot})
        if op == "started":
            budgets.serve_started(function, str(body["slot"]), instance_of(body["instance"]))
        elif op == "failed":
            budgets.serve_failed(function, str(body["slot"]))
        elif op == "release":
            await budgets.serve_release(function, instance_of(body["instance"]))
        elif op == "lost":
            await budgets.serve_lost(function, instance_of(body["instance"]))
        elif op == "claimed":
            budgets.serve_claimed(function, instance_of(body["instance"]))
        else:
            raise GatewayError(404, "not_found", f"no budget operation {op!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise bad_request(f"bad budget call: {e}") from None
    return web.json_response({"ok": True})


async def seats(request: web.Request) -> web.StreamResponse:
    _internal(request)
    gw = request.app[GATEWAY]
    return web.json_response({"seats": gw.manager.seats(request.query.get("function", ""))})


async def touch(request: web.Request) -> web.StreamResponse:
    _internal(request)
    gw = request.app[GATEWAY]
    assert gw.lifecycle is not None
    body = await _json(request)
    key, function = body.get("key"), body.get("function")
    found = isinstance(key, str) and isinstance(function, str) and gw.lifecycle.touch(function, key)
    return web.json_response({"ok": found}, status=200 if found else 404)


async def sessions(request: web.Request) -> web.StreamResponse:
    _internal(request)
    gw = request.app[GATEWAY]
    caller = Caller(request.query.get("principal"))  # the asking replica authenticated the caller
    return web.json_response({"items": local_sessions(gw, request.query.get("function", ""), caller)})


async def a2a_task(request: web.Request) -> web.StreamResponse:
    """The context of an A2A task this replica relayed an answer for (404: none known here)."""
    _internal(request)
    gw = request.app[GATEWAY]
    tasks = gw.a2a_tasks.get(request.query.get("function", ""))
    context = tasks.context_of(request.query.get("task", "")) if tasks is not None else None
    return web.json_response({"context": context}, status=200 if context else 404)


async def healthz(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    return web.json_response(
        {
            "ok": True,
            "replica": gw.membership.self_id,
            "members": list(gw.membership.members),
            "sessions": len(gw.manager.registry),
            "instances": len(gw.manager.instance_ids()),
        }
    )


async def readyz(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    if gw.catalog_synced is not None and not gw.catalog_synced.is_set():
        raise GatewayError(503, "not_ready", "the Function catalog has not been listed from the cluster yet")
    return web.json_response({"ok": True, "functions": sum(1 for _ in gw.catalog)})


async def metrics(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    for fn in gw.catalog:
        gw.metrics.sessions.labels(fn.key, "known").set(gw.manager.registry.count(fn.key))
    return web.Response(body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_post(INTERNAL_PREFIX + "/bindings", bindings)
    app.router.add_post(INTERNAL_PREFIX + "/touch", touch)
    app.router.add_post(INTERNAL_PREFIX + "/end", end)
    app.router.add_get(INTERNAL_PREFIX + "/budget/seats", seats)
    app.router.add_post(INTERNAL_PREFIX + "/budget/{op}", budget)
    app.router.add_get(INTERNAL_PREFIX + "/sessions", sessions)
    app.router.add_get(INTERNAL_PREFIX + "/a2a/task", a2a_task)
    app.router.add_get("/_voltgrid/healthz", healthz)
    app.router.add_get("/_voltgrid/readyz", readyz)
    app.router.add_get("/_voltgrid/metrics", metrics)
