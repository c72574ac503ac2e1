"""Helpers of the trigger tests: an HTTP sink standing in for the gateway, and targets pointing at it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from voltgrid.api.function import SessionPolicy
from voltgrid.api.triggers import Retry, SessionFrom
from voltgrid.triggers.dispatch import Target
from voltgrid.triggers.events import invoke_url
from voltgrid.triggers.retry import Backoff


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    ok: bool = False  # answered 2xx


@dataclass
class Sink:
    """A real HTTP server on loopback that records every POST and answers as told per ``ce-id``."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # ce-id -> how many 500s before a 200
    always_fail: set[str] = field(default_factory=set)
    hold: asyncio.Event | None = None  # set: answer; unset: every request waits
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    def ids(self) -> list[str]:
        return [r.headers.get("ce-id", "") for r in self.received]

    async def handle(self, request: web.Request) -> web.Response:
        rec = Received(request.path, dict(request.headers), await request.read())
        self.received.append(rec)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        ce_id = rec.headers.get("ce-id", "")
        if ce_id in self.always_fail:
            return web.Response(status=503, text="always failing")
        if self.failures.get(ce_id, 0) > 0:
            self.failures[ce_id] -= 1
            return web.Response(status=500, text="failing")
        rec.ok = True
        return web.Response(status=200, text="ok")


def make_target(
    sink: Sink, session: SessionFrom | None = None, max_retries: int = 3, name: str = "ns/echo/orders"
) -> Target:
    retry = Retry(max_retries=max_retries, min_backoff="10ms", max_backoff="40ms")
    return Target(name, invoke_url(sink.url, "ns", "echo", "/events"), SessionPolicy(), session, Backoff.of(retry))


def delivered(sink: Sink) -> list[str]:
    """The ids the sink answered 2xx to, in order (failures excluded)."""
    return [r.headers.get("ce-id", "") for r in sink.received if r.ok]


async def wait_until(predicate: Callable[[], bool], within: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
