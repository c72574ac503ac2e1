"""The dispatcher's work list: which consumers, timers and ingress routes the Functions' triggers ask for.

:func:`plan` is pure (Functions and resolved broker URLs in, jobs out) and table-tested; a
:class:`Runner` keeps one task per job and, when the Functions change, stops the jobs that went
away or changed and starts the new ones, leaving the others running (a consumer keeps its broker
connection and its in-flight messages across unrelated edits).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aio_pika.exceptions
import redis.asyncio as aioredis
import redis.exceptions
from cloudevents.core.base import BaseCloudEvent

from voltgrid.api.function import Function
from voltgrid.api.triggers import Broker, Cron, Queue, SecretKeyRef, Trigger, TriggerType, dead_letter_of
from voltgrid.triggers.cron import MemoryLedger, TickLedger, run_cron
from voltgrid.triggers.dispatch import Dispatcher, Target
from voltgrid.triggers.events import delivery, invoke_url, session_key
from voltgrid.triggers.ingress import Ingress, Route
from voltgrid.triggers.rabbitmq import RabbitConsumer
from voltgrid.triggers.redis_streams import RedisStreamConsumer
from voltgrid.triggers.report import (
    BROKER_UNREACHABLE,
    CONNECTING,
    CONSUMER_FAILED,
    QUEUE_NOT_FOUND,
    ROUTED,
    SCHEDULED,
)
from voltgrid.triggers.retry import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Missing:
    """Why a Secret key gave no broker URL: ``reason`` is SecretMissing or SecretKeyMissing."""

    reason: str
    message: str


#: Resolves a Secret key in a namespace to its value (the broker URL), or says why there is none.
SecretLookup = Callable[[str, SecretKeyRef], str | Missing]


@dataclass(frozen=True, slots=True)
class Problem:
    """A trigger left out of the plan: which (``<ns>/<function>/<trigger>``), the reason, the message."""

    trigger: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class CronJob:
    target: Target
    cron: Cron


@dataclass(frozen=True, slots=True)
class QueueJob:
    target: Target
    queue: Queue
    url: str


Job = CronJob | QueueJob


def target_of(gateway: str, fn: Function, trigger: Trigger) -> Target:
    ns, name = fn.metadata.namespace or "default", fn.metadata.name or ""
    return Target(
        f"{ns}/{name}/{trigger.name}",
        invoke_url(gateway, ns, name, trigger.path),
        fn.spec.sessions,
        trigger.session,
        Backoff.of(trigger.retry),
        trigger.sink,
    )


def plan(
    gateway: str, functions: Iterable[Function], secrets: SecretLookup
) -> tuple[dict[str, Job], list[Route], list[Problem]]:
    """Jobs by a key that changes whenever what the job does changes, ingress routes, and problems.

    A queue trigger whose Secret (or key) is missing is left out and named in the problems, the
    rest of the Functions' triggers run.
    """
    jobs: dict[str, Job] = {}
    routes: list[Route] = []
    problems: list[Problem] = []
    for fn in functions:
        ns = fn.metadata.namespace or "default"
        for trigger in fn.spec.triggers:
            target = target_of(gateway, fn, trigger)
            job: Job
            if trigger.type is TriggerType.CLOUD_EVENTS and trigger.cloud_events is not None:
                routes.append(Route(ns, tuple(trigger.cloud_events.filters), target))
                continue
            if trigger.type is TriggerType.CRON and trigger.cron is not None:
                job = CronJob(target, trigger.cron)
            elif trigger.type is TriggerType.QUEUE and trigger.queue is not None:
                url = secrets(ns, trigger.queue.url_from)
                if isinstance(url, Missing):
                    problems.append(Problem(target.name, url.reason, url.message))
                    continue
                job = QueueJob(target, trigger.queue, url)
            else:
                continue
            jobs[f"{target.name}#{_digest(fn, trigger, job)}"] = job
    return jobs, routes, problems


def _digest(fn: Function, trigger: Trigger, job: Job) -> str:
    """Changes when the trigger, the Function's affinity or the broker URL changes."""
    doc = {"t": trigger.to_wire(), "s": fn.spec.sessions.to_wire(), "u": getattr(job, "url", "")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


#: Seconds before a job that failed (a broker outage) is started again.
RESTART_DELAY: Final = 5.0


def failure_reason(e: Exception) -> str:
    """The state reason of a job that failed with ``e``: the queue is missing, the broker cannot
    be reached (refused, timed out, lost), or something else went wrong in the consumer."""
    if isinstance(e, aio_pika.exceptions.ChannelNotFoundEntity):
        return QUEUE_NOT_FOUND
    if isinstance(
        e, OSError | TimeoutError | aio_pika.exceptions.AMQPConnectionError | redis.exceptions.ConnectionError
    ):
        return BROKER_UNREACHABLE
    return CONSUMER_FAILED


class Runner:
    """One task per job; :meth:`apply` reconciles them with a new plan."""

    def __init__(
        self, dispatcher: Dispatcher, ingress: Ingress, replica: str, ledger: TickLedger | None = None
    ) -> None:
        self.dispatcher = dispatcher
        self.ingress = ingress
        self.replica = replica
        self.ledger = ledger or MemoryLedger()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def running(self) -> list[str]:
        return sorted(self._tasks)

    async def apply(self, jobs: Mapping[str, Job], routes: Iterable[Route], problems: Iterable[Problem] = ()) -> None:
        """Run the plan's jobs and routes, and report every trigger's state (the problems' too)."""
        report = self.dispatcher.reporter
        self.ingress.routes = tuple(routes)
        for route in self.ingress.routes:
            filters = ", ".join(f.attribute for f in route.filters) or "none"
            report.state(
                route.target.name,
                True,
                ROUTED,
                f"CloudEvents POSTed to /events/{route.namespace} (filters on: {filters})",
            )
        for problem in problems:
            report.state(problem.trigger, False, problem.reason, problem.message)
        for key in [k for k in self._tasks if k not in jobs]:
            await self._stop(key)
        for key, job in jobs.items():
            if key not in self._tasks:
                if isinstance(job, CronJob):
                    zone = "" if job.cron.schedule.startswith("@") else f" ({job.cron.timezone})"
                    report.state(job.target.name, True, SCHEDULED, f"schedule {job.cron.schedule}{zone}")
                else:
                    report.state(job.target.name, False, CONNECTING, f"connecting to {job.queue.broker.value}")
                self._tasks[key] = asyncio.create_task(self._run(job), name=key)

    async def close(self) -> None:
        for key in list(self._tasks):
            await self._stop(key)

    async def _stop(self, key: str) -> None:
        task = self._tasks.pop(key)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self, job: Job) -> None:
        """Run a job until cancelled; a broken one (broker down) is restarted after a pause."""
        while True:
            try:
                await self._job(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broker outage must not end the trigger for good
                log.warning("trigger %s: %s: %s; restarting in 5s", job.target.name, type(e).__name__, e)
                reason = failure_reason(e)
                queue = job.queue.queue if isinstance(job, QueueJob) else ""
                message = f"queue {queue}: {type(e).__name__}: {e}" if queue else f"{type(e).__name__}: {e}"
                self.dispatcher.reporter.state(job.target.name, False, reason, message)
            await asyncio.sleep(RESTART_DELAY)

    def _job(self, job: Job) -> Coroutine[Any, Any, None]:
        if isinstance(job, CronJob):
            return run_cron(
                job.target.name,
                job.cron,
                lambda event: self._fire(job.target, event),
                ledger=self.ledger,
                metrics=self.dispatcher.metrics,
                reporter=self.dispatcher.reporter,
            )
        if job.queue.broker is Broker.RABBITMQ:
            return RabbitConsumer(
                job.url,
                job.queue.queue,
                dead_letter=dead_letter_of(job.queue),
                prefetch=job.queue.prefetch,
                dispatcher=self.dispatcher,
                target=job.target,
            ).run()
        return self._redis(job)

    async def _redis(self, job: QueueJob) -> None:
        client = aioredis.Redis.from_url(job.url)
        try:
            await RedisStreamConsumer(
                client,
                job.queue.queue,
                group=job.queue.group,
                consumer=self.replica,
                dead_letter=dead_letter_of(job.queue),
                prefetch=job.queue.prefetch,
                dispatcher=self.dispatcher,
                target=job.target,
            ).run()
        finally:
            await client.aclose()

    async def _fire(self, target: Target, event: BaseCloudEvent) -> None:
        key = session_key(target.session, event.get_attributes(), None)
        await self.dispatcher.deliver(target, delivery(target.url, event, target.policy, key))
