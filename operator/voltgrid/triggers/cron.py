"""Cron triggers: when the next tick is, which tick to fire after downtime, and the firing loop.

Ticks are instants every replica computes alike (``@every`` intervals are anchored at the Unix
epoch, cron fields are read in the trigger's time zone by croniter), so "fire tick T once" is a
claim on (trigger, T) in a shared :class:`TickLedger` rather than an agreement between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from cloudevents.core.v1.event import CloudEvent
from croniter import croniter

from voltgrid.api.common import parse_duration
from voltgrid.api.triggers import EVERY_PREFIX, CatchUp, Concurrency, Cron
from voltgrid.triggers.metrics import TriggerMetrics
from voltgrid.triggers.report import TICK_SKIPPED, WARNING, Reporter

log = logging.getLogger(__name__)

CRON_EVENT_TYPE: Final = "dev.voltgrid.cron.tick"
#: A tick is on time when the loop wakes within this of it; later means the dispatcher was away
#: (down, or the event loop stalled) and the catch-up policy decides.
ON_TIME: Final = timedelta(seconds=5)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron expression in a time zone, or a fixed interval."""

    expression: str
    tz: ZoneInfo
    every: float | None  # seconds, for '@every'

    @classmethod
    def of(cls, cron: Cron) -> Schedule:
        every = None
        if cron.schedule.startswith(EVERY_PREFIX):
            every = parse_duration(cron.schedule.removeprefix(EVERY_PREFIX).strip()).total_seconds()
        return cls(cron.schedule, ZoneInfo(cron.timezone), every)

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t`` (aware, UTC)."""
        if self.every is not None:
            n = math.floor((t - EPOCH).total_seconds() / self.every) + 1
            return EPOCH + timedelta(seconds=n * self.every)
        nxt: datetime = croniter(self.expression, t.astimezone(self.tz)).get_next(datetime)
        return nxt.astimezone(UTC)

    def latest_at(self, t: datetime) -> datetime:
        """The last tick at or before ``t``."""
        if self.every is not None:
            n = math.floor((t - EPOCH).total_seconds() / self.every)
            return EPOCH + timedelta(seconds=n * self.every)
        prev: datetime = croniter(self.expression, (t + timedelta(microseconds=1)).astimezone(self.tz)).get_prev(
            datetime
        )
        return prev.astimezone(UTC)


def plan(schedule: Schedule, catch_up: CatchUp, last: datetime | None, now: datetime) -> datetime | None:
    """The tick to fire at ``now``, given the last tick handled (fired or skipped); None: nothing.

    Ticks missed while no dispatcher ran are never fired one by one: ``Skip`` drops them,
    ``FireOnce`` fires the latest of them once. A first start (no ``last``) fires nothing missed.
    """
    latest = schedule.latest_at(now)
    if last is not None and latest <= last:
        return None
    if now - latest <= ON_TIME:
        return latest
    if last is None or catch_up is CatchUp.SKIP:
        return None
    return latest


class TickLedger(Protocol):
    """Which tick of each trigger was last handled, shared by the replicas."""

    async def last(self, trigger: str) -> datetime | None: ...

    async def claim(self, trigger: str, tick: datetime) -> bool:
        """Record ``tick`` as handled; False when another replica already handled it or a later one."""
        ...


class MemoryLedger:
    """A ledger for one replica (and tests); replicas share a ledger in a broker or a Lease."""

    def __init__(self) -> None:
        self._last: dict[str, datetime] = {}

    async def last(self, trigger: str) -> datetime | None:
        return self._last.get(trigger)

    async def claim(self, trigger: str, tick: datetime) -> bool:
        if (seen := self._last.get(trigger)) is not None and seen >= tick:
            return False
        self._last[trigger] = tick
        return True


def tick_event(name: str, cron: Cron, tick: datetime) -> CloudEvent:
    """The CloudEvent of one tick: its id names the tick, so a receiver can deduplicate."""
    return CloudEvent(
        {
            "id": f"{name}/{tick.strftime('%Y%m%dT%H%M%SZ')}",
            "source": f"/voltgrid/triggers/{name}",
            "type": CRON_EVENT_TYPE,
            "time": tick,
            "datacontenttype": cron.content_type,
        },
        cron.data.encode(),
    )


Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


async def run_cron(
    name: str,
    cron: Cron,
    fire: Callable[[CloudEvent], Coroutine[Any, Any, object]],
    *,
    ledger: TickLedger,
    metrics: TriggerMetrics,
    reporter: Reporter,
    clock: Clock = wall_clock,
) -> None:
    """Fire ``cron``'s ticks until cancelled; ``fire`` delivers one (retries included)."""
    schedule = Schedule.of(cron)
    in_flight: set[asyncio.Task[object]] = set()
    try:
        while True:
            now = clock()
            last = await ledger.last(name)
            tick = plan(schedule, cron.catch_up, last, now)
            if tick is None:
                latest = schedule.latest_at(now)
                if last is None or latest > last:  # missed while away: handled by skipping it
                    if last is not None:
                        metrics.skipped.labels(name).inc()
                    await ledger.claim(name, latest)
                await asyncio.sleep(max(0.0, (schedule.next_after(now) - now).total_seconds()))
                continue
            if not await ledger.claim(name, tick):
                continue  # another replica fired it
            if cron.concurrency is Concurrency.FORBID and in_flight:
                metrics.skipped.labels(name).inc()
                log.info("trigger %s: tick %s skipped, the previous one is still in flight", name, tick)
                reporter.event(
                    name,
                    WARNING,
                    TICK_SKIPPED,
                    f"tick {tick.isoformat()} skipped (concurrency Forbid):"
                    " the previous tick's delivery is still in flight",
                )
                continue
            task: asyncio.Task[object] = asyncio.create_task(fire(tick_event(name, cron, tick)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    finally:
        for task in in_flight:
            task.cancel()
        for task in list(in_flight):
            with contextlib.suppress(asyncio.CancelledError):
                await task
