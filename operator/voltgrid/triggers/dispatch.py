"""Deliver one event to the gateway, retrying with backoff; the verdict tells the consumer what to ack.

The dispatcher is a plain HTTP client of the gateway (one pooled aiohttp session per replica): it
never reaches instances itself, so affinity, the cold-start queue, limits and metering apply. An
event counts as delivered only when the gateway answered 2xx; a refused connection, a timeout or any
other status is a failed attempt.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

import aiohttp

from voltgrid.api.function import SessionPolicy
from voltgrid.api.triggers import SessionFrom
from voltgrid.triggers.events import Delivery, Message, delivery, message_event, session_key
from voltgrid.triggers.metrics import TriggerMetrics
from voltgrid.triggers.report import DEAD_LETTERED, WARNING, Reporter
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
class Target:
    """Where one trigger's events go and how: the invoke URL, the Function's affinity, the policy."""

    name: str  # <namespace>/<function>/<trigger>: the metrics label and the events' source
    url: str
    policy: SessionPolicy
    session: SessionFrom | None
    backoff: Backoff


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

    async def post(self, d: Delivery) -> tuple[int | None, str]:
        """One attempt: the status (None without an answer) and, on failure, why."""
        try:
            async with self._http.post(d.url, data=d.body, headers=d.headers, timeout=self._timeout) as resp:
                await resp.read()  # drain, so the connection goes back to the pool
                return resp.status, "" if resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as e:
            return None, f"{type(e).__name__}: {e}"

    async def deliver(self, target: Target, d: Delivery) -> Outcome:
        """POST until 2xx or retries run out, sleeping the backoff between attempts."""
        m = self.metrics
        attempt = 0
        with m.in_flight.labels(target.name).track_inprogress():
            while True:
                attempt += 1
                status, error = await self.post(d)
                verdict = target.backoff.verdict(attempt, status)
                if verdict is Verdict.ACK:
                    m.delivered.labels(target.name).inc()
                    self.reporter.delivered(target.name)
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


def message_delivery(target: Target, message: Message) -> tuple[Delivery, str | None]:
    """A broker message as a CloudEvent (binary mode) for ``target``, and its session key."""
    event = message_event(message, source=f"/voltgrid/triggers/{target.name}", event_type=QUEUE_EVENT_TYPE)
    key = session_key(target.session, event.get_attributes(), message)
    return delivery(target.url, event, target.policy, key), key
