"""The CloudEvents ingress: CloudEvents 1.0 over HTTP in, each delivered to every matching trigger.

``POST /events/<namespace>`` accepts the three HTTP modes of the spec: binary (``ce-*`` headers,
the body is the data), structured (``application/cloudevents+json``) and batch
(``application/cloudevents-batch+json``, a JSON array). An event is delivered (binary mode, through
the gateway, like every trigger) to each ``cloudevents`` trigger of a Function in that namespace
whose filters all hold. The answer comes after delivery: 200 when every matching trigger answered
2xx, 502 naming the triggers that did not, so a producer that retries on failure gets at least once.
A request that is not a CloudEvent gets 400 naming the problem, never a 500.

The parsing (:func:`voltgrid.triggers.events.parse`, shared with the Functions' replies) and the
matching are pure (table-tested); the CloudEvents SDK builds the events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from cloudevents.core.base import BaseCloudEvent

from voltgrid.api.triggers import Filter
from voltgrid.errors import MalformedEventError
from voltgrid.triggers.dispatch import Dispatcher, Target
from voltgrid.triggers.events import delivery, parse, session_key
from voltgrid.triggers.retry import Verdict

log = logging.getLogger(__name__)

MAX_BODY: Final = 4 * 1024 * 1024


def matches(filters: Sequence[Filter], event: BaseCloudEvent) -> bool:
    """Every filter holds (an empty list matches everything); a missing attribute fails its filter."""
    attributes = event.get_attributes()
    for f in filters:
        value = attributes.get(f.attribute)
        if value is None:
            return False
        text = value.isoformat() if hasattr(value, "isoformat") else str(value)
        if f.exact is not None and text != f.exact:
            return False
        if f.prefix is not None and not text.startswith(f.prefix):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Route:
    """A ``cloudevents`` trigger of a Function: its namespace, filters and delivery target."""

    namespace: str
    filters: tuple[Filter, ...]
    target: Target


class Ingress:
    """The ingress's routes (replaced whole when Functions change) and its request handler."""

    def __init__(self, dispatcher: Dispatcher, routes: Sequence[Route] = ()) -> None:
        self.dispatcher = dispatcher
        self.routes: tuple[Route, ...] = tuple(routes)

    def matching(self, namespace: str, event: BaseCloudEvent) -> list[Target]:
        return [r.target for r in self.routes if r.namespace == namespace and matches(r.filters, event)]

    async def _deliver(self, target: Target, event: BaseCloudEvent) -> tuple[str, bool]:
        key = session_key(target.session, event.get_attributes(), None)
        outcome = await self.dispatcher.deliver(target, delivery(target.url, event, target.policy, key))
        return target.name, outcome.verdict is Verdict.ACK

    async def handle(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        try:
            events = parse({k.lower(): v for k, v in request.headers.items()}, await request.read())
        except MalformedEventError as e:
            log.info("ingress: 400 for %s: %s", request.remote, e)
            return web.json_response({"error": str(e)}, status=400)
        jobs = [self._deliver(t, ev) for ev in events for t in self.matching(namespace, ev)]
        results = await asyncio.gather(*jobs)
        failed = sorted({name for name, ok in results if not ok})
        body = {"events": len(events), "deliveries": len(results), "failed": failed}
        return web.json_response(body, status=502 if failed else 200)


def ingress_app(ingress: Ingress) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/events/{namespace}", ingress.handle)
    return app
