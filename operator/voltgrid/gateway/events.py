"""The CloudEvents ingress on the gateway: ``POST /_voltgrid/v1/events/{namespace}``.

Producers outside the cluster reach Voltgrid at one address, the gateway's; the events are passed,
streamed and unchanged (binary, structured or batch mode), to the trigger dispatcher's ingress
(:mod:`voltgrid.triggers.ingress`, setting ``events_url``, set by the chart when triggers are on),
which matches them to the ``cloudevents`` triggers of that namespace's Functions and delivers each
back through the gateway with affinity, the cold-start queue, limits, metering and tracing. Its
answer (200 once every matching trigger answered 2xx, 400 naming what is not a CloudEvent, 502 naming
the triggers that failed) comes back as it is, so a producer that retries gets at least once.

Closed by default like the Session API: an operator API token or a token of the ``api_jwt`` policy.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from voltgrid.gateway.access import session_api_caller
from voltgrid.gateway.core import GATEWAY
from voltgrid.gateway.errors import not_found
from voltgrid.gateway.relaying import relay

PATH: Final = "/_voltgrid/v1/events/{namespace}"
#: What of the producer's request the dispatcher needs: the CloudEvents attributes of binary mode
#: (``ce-*``), the content type (it tells the modes apart) and the trace context.
_PASSED: Final = frozenset({"content-type", "content-length", "traceparent", "tracestate"})


async def ingest(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    session_api_caller(request.headers.get("Authorization"), gw.api_tokens, gw.api_verifier)
    base = gw.settings.events_url
    if not base:
        raise not_found("this gateway has no CloudEvents ingress (setting events_url; the chart sets it with triggers)")
    headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED or k.lower().startswith("ce-")}
    url = f"{base.rstrip('/')}/events/{request.match_info['namespace']}"
    return await relay(
        request,
        url,
        headers,
        what="the trigger dispatcher",
        unreachable="dispatcher_unreachable",
        failed="dispatcher_failed",
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, ingest)
