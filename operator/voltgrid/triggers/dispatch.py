"""Deliver one event to the gateway, retrying with backoff; the verdict tells the consumer what to ack.

The dispatcher is a plain HTTP client of the gateway (one pooled aiohttp session per replica): it
never reaches instances itself, so affinity, the cold-start queue, limits and metering apply. An
event counts as delivered only when the gateway answered 2xx; a refused connection, a timeout or any
other status is a failed attempt.

A Function may answer an event with a CloudEvent (binary or structured mode): when its trigger
names a ``sink``, that reply is POSTed there in binary mode, retried with the trigger's backoff. The
event counts as delivered either way (the Function did answer 2xx): a sink that stays down drops
the reply, counted in ``voltgrid_trigger_replies_dropped`` and an Event, rather than redelivering
the event to a Function that already handled it. The broker's ack waits for the forward (or the
drop), so a replica killed meanwhile has the event redelivered and the reply sent then: the reply
is at least once too, and a slow sink slows the trigger instead of piling replies up in memory.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import to_binary_event

from voltgrid.api.function import SessionPolicy
from voltgrid.api.triggers import SessionFrom
from voltgrid.errors import MalformedEventError
from voltgrid.triggers.events import Delivery, Message, delivery, message_event, reply_event, session_key
from voltgrid.triggers.metrics import TriggerMetrics
from voltgrid.triggers.report import DEAD_LETTERED, REPLY_DROPPED, WARNING, Reporter
from voltgrid.triggers.retry import Backoff, Verdict

log = logging.getLogger(__name__)

#: How long one attempt may take, cold start included: the gateway queues a request while an
#: instance starts, so this is longer than any request timeout a handler would want.
DEFAULT_ATTEMPT_TIMEOUT: Final = 300.0
QUEUE_EVENT_TYPE: Final = "dev.voltgrid.queue.message"
#: The headers a dead-lettered message carries: how many attempts, and the last failure.
ATTEMPTS_HEADER: Final = "x-voltgrid-attempts"
ERROR_HEADER: Final = "x-voltgrid-last-error"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict  # ACK or DEAD_LETTER: the final word on this event
    attempts: int
    last_error: str  # "" when delivered


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST got: the status (None: no answer), why it failed, the answer's headers and body."""

    status: int | None
    error: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one trigger's events go and how: the invoke URL, the Function's affinity, the policy."""

    name: str  # <namespace>/<function>/<trigger>: the metrics label and the events' source
    url: str
    policy: SessionPolicy
    session: SessionFrom | None
    backoff: Backoff
    sink: str | None = None  # where the Function's CloudEvent replies are forwarded


class Dispatcher:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        metrics: TriggerMetrics | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        reporter: Reporter | None = None,
    ) -> None:
        self._http = http
        self.metrics = metrics or TriggerMetrics()
        #: Trigger states and Events: the consumers report through it too.
        self.reporter = reporter or Reporter()
        self._timeout = aiohttp.ClientTimeout(total=attempt_timeout)

    async def post(self, d: Delivery) -> Answer:
        """One attempt: the status (None without an answer), on failure why, and the answer itself."""
        try:
            async with self._http.post(d.url, data=d.body, headers=d.headers, timeout=self._timeout) as resp:
                body = await resp.read()  # drained, so the connection goes back to the pool
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return Answer(resp.status, "" if resp.status < 300 else f"HTTP {resp.status}", headers, body)
        except (aiohttp.ClientError, TimeoutError) as e:
            return Answer(None, f"{type(e).__name__}: {e}")

    async def deliver(self, target: Target, d: Delivery) -> Outcome:
        """POST until 2xx or retries run out, sleeping the backoff between attempts."""
        m = self.metrics
        attempt = 0
        with m.in_flight.labels(target.name).track_inprogress():
            while True:
                attempt += 1
                answer = await self.post(d)
                error = answer.error
                verdict = target.backoff.verdict(attempt, answer.status)
                if verdict is Verdict.ACK:
                    m.delivered.labels(target.name).inc()
                    self.reporter.delivered(target.name)
                    if target.sink is not None:
                        await self._reply(target, target.sink, answer)
                    return Outcome(verdict, attempt, "")
                m.failed.labels(target.name).inc()
                if verdict is Verdict.DEAD_LETTER:
                    m.dead_lettered.labels(target.name).inc()
                    log.warning("trigger %s: giving up after %d attempts: %s", target.name, attempt, error)
                    self.reporter.event(
                        target.name,
                        WARNING,
                        DEAD_LETTERED,
                        f"an event was dead-lettered after {attempt} attempts: {error}",
                    )
                    return Outcome(verdict, attempt, error)
                m.retried.labels(target.name).inc()
                await asyncio.sleep(target.backoff.delay(attempt))

    async def _reply(self, target: Target, sink: str, answer: Answer) -> None:
        """Forward the Function's CloudEvent reply (if it answered with one) to the trigger's sink."""
        try:
            event = reply_event(answer.headers, answer.body)
        except MalformedEventError as e:
            self._drop(target, f"the Function's reply is not a valid CloudEvent: {e}")
            return
        if event is not None:
            await self._forward(target, sink, event)

    async def _forward(self, target: Target, sink: str, event: BaseCloudEvent) -> None:
        """POST ``event`` to ``sink`` in binary mode until 2xx or the trigger's retries run out."""
        m = self.metrics
        message = to_binary_event(event)
        d = Delivery(sink, dict(message.headers), message.body)
        attempt = 0
        while True:
            attempt += 1
            answer = await self.post(d)
            verdict = target.backoff.verdict(attempt, answer.status)
            if verdict is Verdict.ACK:
                m.replies_forwarded.labels(target.name).inc()
                return
            m.replies_failed.labels(target.name).inc()
            if verdict is Verdict.DEAD_LETTER:
                self._drop(
                    target, f"reply {event.get_id()} not accepted by {sink} after {attempt} attempts: {answer.error}"
                )
                return
            await asyncio.sleep(target.backoff.delay(attempt))

    def _drop(self, target: Target, why: str) -> None:
        self.metrics.replies_dropped.labels(target.name).inc()
        log.warning("trigger %s: %s", target.name, why)
        self.reporter.event(target.name, WARNING, REPLY_DROPPED, why)


def message_delivery(target: Target, message: Message) -> tuple[Delivery, str | None]:
    """A broker message as a CloudEvent (binary mode) for ``target``, and its session key."""
    event = message_event(message, source=f"/voltgrid/triggers/{target.name}", event_type=QUEUE_EVENT_TYPE)
    key = session_key(target.session, event.get_attributes(), message)
    return delivery(target.url, event, target.policy, key), key
