"""Cron triggers: tick arithmetic (5-field in a time zone, @every), catch-up, concurrency, one fire per tick."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cloudevents.core.v1.event import CloudEvent

from bgtask import background
from voltgrid.api.triggers import CatchUp, Concurrency, Cron
from voltgrid.triggers.cron import MemoryLedger, Schedule, plan, run_cron, tick_event
from voltgrid.triggers.metrics import TriggerMetrics
from voltgrid.triggers.report import Reporter


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def sched(schedule: str, tz: str = "UTC") -> Schedule:
    return Schedule.of(Cron(schedule=schedule, timezone=tz))


@pytest.mark.parametrize(
    ("schedule", "tz", "after", "expected"),
    [
        ("*/5 * * * *", "UTC", "2026-03-01T10:02:00+00:00", "2026-03-01T10:05:00+00:00"),
        ("*/5 * * * *", "UTC", "2026-03-01T10:05:00+00:00", "2026-03-01T10:10:00+00:00"),  # strictly after
        ("0 9 * * 1-5", "Europe/Paris", "2026-03-06T09:00:00+01:00", "2026-03-09T09:00:00+01:00"),  # Fri -> Mon
        # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC after the switch to summer time.
        ("0 9 * * *", "Europe/Paris", "2026-03-28T12:00:00+00:00", "2026-03-29T07:00:00+00:00"),
        ("@every 10s", "UTC", "2026-03-01T10:00:03+00:00", "2026-03-01T10:00:10+00:00"),
        ("@every 10s", "Asia/Tokyo", "2026-03-01T10:00:10+00:00", "2026-03-01T10:00:20+00:00"),
        ("@every 1h30m", "UTC", "2026-03-01T00:00:00+00:00", "2026-03-01T01:30:00+00:00"),
    ],
)
def test_next_after(schedule: str, tz: str, after: str, expected: str) -> None:
    assert sched(schedule, tz).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        ("*/5 * * * *", "2026-03-01T10:07:00+00:00", "2026-03-01T10:05:00+00:00"),
        ("*/5 * * * *", "2026-03-01T10:05:00+00:00", "2026-03-01T10:05:00+00:00"),  # at or before
        ("@every 10s", "2026-03-01T10:00:19.9+00:00", "2026-03-01T10:00:10+00:00"),
    ],
)
def test_latest_at(schedule: str, now: str, expected: str) -> None:
    assert sched(schedule).latest_at(at(now)) == at(expected)


T0 = at("2026-03-01T10:00:00+00:00")
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("catch_up", "last", "now", "fires"),
    [
        (CatchUp.SKIP, T0 - 10 * S, T0, T0),  # on time
        (CatchUp.SKIP, T0 - 10 * S, T0 + 2 * S, T0),  # a little late is still on time
        (CatchUp.SKIP, T0, T0 + 2 * S, None),  # already handled
        (CatchUp.SKIP, T0 - 100 * S, T0 + 7 * S, None),  # away for 10 ticks: dropped
        (CatchUp.FIRE_ONCE, T0 - 100 * S, T0 + 7 * S, T0),  # away for 10 ticks: the latest, once
        (CatchUp.FIRE_ONCE, None, T0 + 7 * S, None),  # first start ever: nothing was missed
        (CatchUp.FIRE_ONCE, None, T0 + 1 * S, T0),
    ],
)
def test_plan(catch_up: CatchUp, last: datetime | None, now: datetime, fires: datetime | None) -> None:
    assert plan(sched("@every 10s"), catch_up, last, now) == fires


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"schedule": "* * * *"}, "not a 5-field cron expression"),
        ({"schedule": "61 * * * *"}, "not a 5-field cron expression"),
        ({"schedule": "* * * * * *"}, "not a 5-field cron expression"),  # no seconds field
        ({"schedule": "@every 10"}, "invalid duration"),
        ({"schedule": "@every 100ms"}, "at least 1s"),
        ({"schedule": "@hourly"}, "not a 5-field"),
        ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "not an IANA time zone"),
    ],
)
def test_cron_rejects(spec: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Cron.model_validate(spec)


def test_tick_event_id_names_the_tick() -> None:
    event = tick_event("ns/echo/nightly", Cron(schedule="@every 10s", data='{"job": 1}'), T0)
    assert event.get_id() == "ns/echo/nightly/20260301T100000Z"
    assert event.get_type() == "dev.voltgrid.cron.tick"
    assert event.get_data() == b'{"job": 1}'


def loop_clock() -> datetime:
    """Wall time following the event loop's (virtual, under looptime) clock."""
    return T0 + timedelta(seconds=asyncio.get_running_loop().time())


@pytest.mark.looptime(start=0)
async def test_every_tick_fires_once_across_two_replicas_sharing_a_ledger() -> None:
    fired: list[str] = []

    async def fire(event: CloudEvent) -> None:
        fired.append(event.get_id())

    cron = Cron(schedule="@every 10s")
    ledger, metrics = MemoryLedger(), TriggerMetrics()
    async with (
        background(
            run_cron("ns/echo/t", cron, fire, ledger=ledger, metrics=metrics, reporter=Reporter(), clock=loop_clock)
        ),
        background(
            run_cron("ns/echo/t", cron, fire, ledger=ledger, metrics=metrics, reporter=Reporter(), clock=loop_clock)
        ),
    ):
        await asyncio.sleep(55)
    # T0 itself (the first start is on time for it), then 10:00:10 ... 10:00:50: each once.
    assert fired == [f"ns/echo/t/20260301T1000{s:02d}Z" for s in (0, 10, 20, 30, 40, 50)]


@pytest.mark.looptime(start=0)
@pytest.mark.parametrize(("concurrency", "fires"), [(Concurrency.ALLOW, 6), (Concurrency.FORBID, 2)])
async def test_forbid_skips_ticks_while_the_previous_is_in_flight(concurrency: Concurrency, fires: int) -> None:
    started: list[str] = []

    async def slow(event: CloudEvent) -> None:
        started.append(event.get_id())
        await asyncio.sleep(35)  # longer than three ticks

    metrics = TriggerMetrics()
    cron = Cron(schedule="@every 10s", concurrency=concurrency)
    async with background(
        run_cron("ns/echo/t", cron, slow, ledger=MemoryLedger(), metrics=metrics, reporter=Reporter(), clock=loop_clock)
    ):
        await asyncio.sleep(55)
    assert len(started) == fires
    assert metrics.skipped.labels("ns/echo/t")._value.get() == 6 - fires
