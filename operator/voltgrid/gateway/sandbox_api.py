"""The Sandbox API: claim a warm sandbox from a template, manage it, and call its agent.

==================================================  ==================================================
``POST /_voltgrid/v1/sandboxes``                    claim ``{template, namespace?, ttl?, env?,
                                                    metadata?}`` → 201 with the sandbox and its token
``GET /_voltgrid/v1/sandboxes``                     the sandboxes the caller may see
``GET|DELETE /_voltgrid/v1/sandboxes/{id}``         show / burn it
``POST /_voltgrid/v1/sandboxes/{id}/extend``        ``{ttl}``: expire ``ttl`` from now (≤ maxTtl)
``* /_voltgrid/v1/sandboxes/{id}/{agent path}``     the in-sandbox agent's API (``execute``,
                                                    ``contexts``, ``commands``, ``files``, ``stat``,
                                                    ``dirs``), streamed both ways
==================================================  ==================================================

Who may do what: claiming and listing need a Session API credential (an operator API token sees
every sandbox; a token of the ``api_jwt`` policy names a principal that sees only its own). The
sandbox's own token (``Authorization: Bearer <token>``, returned once by the claim) opens its
agent and may show, extend and burn it; nothing else does — not even an operator token, which
manages sandboxes but does not run code in them. The claim is served from memory
(:mod:`voltgrid.gateway.sandboxes`); a replica that knows a sandbox serves its calls itself, and
otherwise passes the request to the replica owning the sandbox's id (one hop, streamed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final

from aiohttp import web

from voltgrid.api.common import parse_duration
from voltgrid.api.pool import SANDBOX_API_PREFIX
from voltgrid.gateway.access import CHALLENGE, Caller, bearer, is_operator, principal_of
from voltgrid.gateway.core import GATEWAY, Gateway
from voltgrid.gateway.errors import GatewayError, bad_request, not_found
from voltgrid.gateway.forward import is_forwarded
from voltgrid.gateway.peers import FORWARDED_HEADER
from voltgrid.gateway.proxy import HOP_BY_HOP
from voltgrid.gateway.relaying import relay
from voltgrid.gateway.sandboxes import SandboxPools, SandboxRecord, parse_metadata
from voltgrid.sandbox_claims import token_matches

logger = logging.getLogger(__name__)

PREFIX: Final = SANDBOX_API_PREFIX
MAX_CLAIM_BODY: Final = 256 * 1024
#: Headers of a client request passed to the agent or the owner (the rest are the gateway's business).
_PASSED: Final = frozenset({"authorization", "content-type", "accept", "content-length"})
DEFAULT_NAMESPACE: Final = "default"


def _pools(gw: Gateway) -> SandboxPools:
    pools = gw.sandboxes
    if pools is None or not pools.enabled:
        raise GatewayError(
            503,
            "sandboxes_disabled",
            "this gateway has no sandbox claim key (setting sandbox_claim_key_file); the chart mounts one",
        )
    return pools


def _manager(gw: Gateway, authorization: str | None) -> Caller:
    """An operator or a principal of the ``api_jwt`` policy; anything else 401."""
    if is_operator(authorization, gw.api_tokens):
        return Caller(None)
    if gw.api_verifier is not None:
        return Caller(principal_of(gw.api_verifier.verify(authorization)))
    raise GatewayError(
        401, "unauthenticated", "the Sandbox API needs a gateway API token or a token of its JWT policy", CHALLENGE
    )


def _holds_token(record: SandboxRecord, authorization: str | None) -> bool:
    token = bearer(authorization)
    return token is not None and token_matches(token, record.token_sha256)


def _may_manage(gw: Gateway, record: SandboxRecord, authorization: str | None) -> bool:
    if _holds_token(record, authorization):
        return True
    try:
        caller = _manager(gw, authorization)
    except GatewayError:
        return False
    return caller.may_see(record.principal)


def _seconds(value: Any, name: str) -> float:
    try:
        seconds = parse_duration(value).total_seconds() if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise bad_request(f"{name}: {e}") from None
    if not 0 < seconds < float("inf"):
        raise bad_request(f"{name} must be a positive duration")
    return seconds


async def _json_body(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The body as sent (to pass on to the owner) and as a JSON object."""
    if not request.body_exists:
        return b"", {}
    if (request.content_length or 0) > MAX_CLAIM_BODY:
        raise GatewayError(413, "body_too_large", f"Sandbox API bodies are at most {MAX_CLAIM_BODY} bytes")
    raw = await request.content.read(MAX_CLAIM_BODY + 1)
    if len(raw) > MAX_CLAIM_BODY:
        raise GatewayError(413, "body_too_large", f"Sandbox API bodies are at most {MAX_CLAIM_BODY} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return raw, body


def _passed_headers(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() in _PASSED and k.lower() not in HOP_BY_HOP}


async def _to_owner(request: web.Request, sandbox_id: str, body: bytes | None = None) -> web.StreamResponse | None:
    """The owner's answer when another replica owns ``sandbox_id`` and this request was not already
    passed on; else None (serve here)."""
    gw = request.app[GATEWAY]
    if is_forwarded(request.headers, gw.settings.internal_token):
        return None
    owner = gw.membership.owner(sandbox_id)
    if owner == gw.membership.self_id:
        return None
    headers = _passed_headers(request)
    headers[FORWARDED_HEADER] = gw.settings.internal_token
    gw.metrics.forwarded.labels("sandbox").inc()
    return await relay(request, owner + request.raw_path, headers, body)


async def _record(request: web.Request, sandbox_id: str, *, owner_only: bool) -> SandboxRecord | web.StreamResponse:
    """This replica's record of ``sandbox_id``, or the owner's answer; 404 when nobody knows it."""
    gw = request.app[GATEWAY]
    pools = _pools(gw)
    record = pools.sandboxes.get(sandbox_id)
    if record is None or (owner_only and not gw.membership.is_owner(sandbox_id)):
        forwarded = await _to_owner(request, sandbox_id)
        if forwarded is not None:
            return forwarded
    if record is None:
        raise _unknown(sandbox_id)
    return record


def _unknown(sandbox_id: str) -> GatewayError:
    return not_found(f"sandbox {sandbox_id!r} not found (expired, deleted or never claimed)", "sandbox_not_found")


async def _managed(request: web.Request, *, owner_only: bool) -> SandboxRecord | web.StreamResponse:
    """The record if the caller may manage it (its token, an operator, its principal), else 404 (no
    telling whether it exists); or the owner's answer."""
    found = await _record(request, request.match_info["id"], owner_only=owner_only)
    if isinstance(found, SandboxRecord) and not _may_manage(
        request.app[GATEWAY], found, request.headers.get("Authorization")
    ):
        raise _unknown(found.id)
    return found


async def claim(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    pools = _pools(gw)
    caller = _manager(gw, request.headers.get("Authorization"))
    raw, body = await _json_body(request)
    name, namespace = body.get("template"), body.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        raise bad_request("'template' (a SandboxTemplate's name) is required; 'namespace' defaults to 'default'")
    info = pools.template(namespace, name)
    ttl = _seconds(body["ttl"], "ttl") if body.get("ttl") is not None else info.ttl
    if ttl > info.max_ttl:
        raise bad_request(f"ttl {ttl:g}s exceeds the template's maxTtl ({info.max_ttl:g}s)")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise bad_request("'env' must map names to strings")
    metadata = parse_metadata(body.get("metadata"))
    key = (namespace, name)
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + pools.claim_timeout
    assert gw.http is not None
    forwarded = is_forwarded(request.headers, gw.settings.internal_token)
    while True:
        pod, owner = pools.pick(key)
        if pod is not None:
            claimed = await pools.claim(gw.http, pod, ttl=ttl, env=env, metadata=metadata, principal=caller.principal)
            if claimed is None:
                continue
            record, token = claimed
            gw.metrics.sandbox_claims.labels(f"{namespace}/{name}", "claimed").inc()
            gw.metrics.sandbox_claim_seconds.labels(f"{namespace}/{name}").observe(time.perf_counter() - started)
            return web.json_response({**record.describe(), "token": token, "url": f"{PREFIX}/{record.id}"}, status=201)
        if owner is not None and not forwarded:
            headers = _passed_headers(request)
            headers[FORWARDED_HEADER] = gw.settings.internal_token
            gw.metrics.forwarded.labels("sandbox").inc()
            return await relay(request, owner + request.raw_path, headers, raw)
        try:
            await pools.wait_for_pod(key, deadline)
        except TimeoutError:
            gw.metrics.sandbox_claims.labels(f"{namespace}/{name}", "pool_empty").inc()
            raise GatewayError(
                503,
                "pool_empty",
                f"no warm sandbox of {namespace}/{name} became ready within {pools.claim_timeout:g}s",
                {"Retry-After": str(gw.settings.retry_after)},
            ) from None


async def list_sandboxes(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    pools = _pools(gw)
    caller = _manager(gw, request.headers.get("Authorization"))
    items = [r.describe() for r in pools.sandboxes.values() if caller.may_see(r.principal)]
    return web.json_response({"items": sorted(items, key=lambda i: i["sandboxId"])})


async def show(request: web.Request) -> web.StreamResponse:
    found = await _managed(request, owner_only=False)
    return web.json_response(found.describe()) if isinstance(found, SandboxRecord) else found


async def extend(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    found = await _managed(request, owner_only=True)
    if not isinstance(found, SandboxRecord):
        return found
    _, body = await _json_body(request)
    if body.get("ttl") is None:
        raise bad_request("'ttl' is required: the sandbox then expires that long from now (at most its maxTtl)")
    _pools(gw).extend(found, _seconds(body["ttl"], "ttl"))
    return web.json_response(found.describe())


async def burn(request: web.Request) -> web.StreamResponse:
    found = await _managed(request, owner_only=True)
    if not isinstance(found, SandboxRecord):
        return found
    await _pools(request.app[GATEWAY]).burn(found)
    return web.json_response({**found.describe(), "deleted": True})


async def agent(request: web.Request) -> web.StreamResponse:
    """A call to the sandbox's agent, with the sandbox's token (the agent checks it too)."""
    found = await _record(request, request.match_info["id"], owner_only=False)
    if not isinstance(found, SandboxRecord):
        return found
    if not _holds_token(found, request.headers.get("Authorization")):
        raise GatewayError(
            401, "unauthenticated", "the sandbox's API needs 'Authorization: Bearer <sandbox token>'", CHALLENGE
        )
    path = request.match_info["path"]
    query = f"?{request.query_string}" if request.query_string else ""
    # The raw path keeps %2F and friends as the client sent them: the agent decides what they mean.
    raw = request.raw_path.split("?", 1)[0]
    tail = raw[len(f"{PREFIX}/{found.id}") :] if raw.startswith(f"{PREFIX}/{found.id}/") else "/" + path
    prepared: list[web.StreamResponse] = []
    call = asyncio.ensure_future(relay(request, found.url + tail + query, _passed_headers(request), None, prepared))
    ended = asyncio.ensure_future(_pools(request.app[GATEWAY]).ended(found.id).wait())
    try:
        await asyncio.wait((call, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        if not call.done():
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
    if call.cancelled():
        if prepared and request.transport is not None:
            request.transport.abort()  # the answer had begun: the client sees it break off, not end
        if prepared or request.transport is None or request.transport.is_closing():
            raise asyncio.CancelledError  # nothing more can be answered
        raise GatewayError(
            502, "sandbox_ended", f"sandbox {found.id!r} ended (expired, deleted or died) during the call"
        )
    return call.result()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(PREFIX, claim)
    r.add_get(PREFIX, list_sandboxes)
    r.add_get(PREFIX + "/{id}", show)
    r.add_delete(PREFIX + "/{id}", burn)
    r.add_post(PREFIX + "/{id}/extend", extend)
    r.add_route("*", PREFIX + "/{id}/{path:.*}", agent)
