"""The one deadline heap: fires on time in virtual time, re-arms lazily, never a task per key."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from voltgrid.controllers.scheduler import Deadline, Scheduler
from voltgrid.registry.scheduler import RETRY, DeadlineScheduler


@pytest.mark.looptime
async def test_fires_at_deadlines_and_re_arms_lazily() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    extend = {"b": loop.time() + 250}

    def on_due(key: str, now: float) -> float | None:
        fired.append((key, round(now - start)))
        return extend.pop(key, None)  # "b" was touched meanwhile: look again later

    start = loop.time()
    sched = DeadlineScheduler(on_due)
    sched.start()
    sched.schedule("a", start + 100)
    sched.schedule("b", start + 200)
    sched.schedule("c", start + 300)
    sched.schedule("c", start + 350)  # a later deadline keeps the earlier entry
    sched.cancel("a")
    await asyncio.sleep(1000)
    await sched.stop()
    assert fired == [("b", 200), ("b", 250), ("c", 300)]
    assert len(sched) == 0


@pytest.mark.looptime
async def test_an_earlier_deadline_wakes_the_sleeping_loop() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    sched = DeadlineScheduler(lambda key, now: fired.append(now) and None)
    sched.start()
    sched.schedule("late", loop.time() + 1000)
    await asyncio.sleep(1)
    sched.schedule("early", loop.time() + 5)
    await asyncio.sleep(10)
    await sched.stop()
    assert len(fired) == 1


@pytest.mark.looptime
async def test_a_million_keys_share_one_task() -> None:
    loop = asyncio.get_running_loop()
    count = 0

    def on_due(key: str, now: float) -> None:
        nonlocal count
        count += 1

    sched = DeadlineScheduler(on_due)
    before = len(asyncio.all_tasks())
    sched.start()
    for i in range(100_000):
        sched.schedule(f"s{i}", loop.time() + 60 + i % 600)
    assert len(asyncio.all_tasks()) == before + 1
    await asyncio.sleep(700)
    await sched.stop()
    assert count == 100_000


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    seen = []

    def on_due(key: str, now: float) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("boom")

    sched = DeadlineScheduler(on_due)
    sched.schedule("bad", 1)
    sched.schedule("good", 2)
    assert await sched.run_due(10) == 2 and seen == ["bad", "good"]


@pytest.mark.looptime
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_failing_key_is_retried_after_a_minute_not_dropped(
    is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A key whose callback raises is looked at again RETRY seconds later (and only then), until the
    callback succeeds: an expiry is never lost to one exception."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    calls: list[float] = []

    def sync_due(key: str, now: float) -> None:
        calls.append(round(now - start))
        if len(calls) < 3:
            raise RuntimeError("apiserver hiccup")

    async def async_due(key: str, now: float) -> None:
        await asyncio.sleep(0)
        sync_due(key, now)

    sched: DeadlineScheduler[str] = DeadlineScheduler(async_due if is_async else sync_due)
    sched.start()
    sched.schedule("sbx", start + 10)
    await asyncio.sleep(1000)
    await sched.stop()
    assert calls == [10, 10 + RETRY, 10 + 2 * RETRY]
    assert len(sched) == 0
    assert sum("retrying in 60" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.looptime
async def test_a_failing_callback_keeps_an_earlier_look_it_scheduled() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    calls: list[float] = []

    def on_due(key: str, now: float) -> None:
        calls.append(round(now - start))
        if len(calls) == 1:
            sched.schedule(key, now + 5)
            raise RuntimeError("boom")

    sched = DeadlineScheduler(on_due)
    sched.start()
    sched.schedule("k", start + 1)
    await asyncio.sleep(200)
    await sched.stop()
    assert calls == [1, 6]


@pytest.mark.looptime
async def test_reschedule_replaces_a_deadline_with_a_later_one() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    fired: list[float] = []
    sched = DeadlineScheduler(lambda key, now: fired.append(round(now - start)) and None)
    sched.start()
    sched.reschedule("k", start + 10)
    sched.reschedule("k", start + 50)
    assert sched.due_at("k") == start + 50
    await asyncio.sleep(100)
    await sched.stop()
    assert fired == [50]


@pytest.mark.looptime
async def test_the_controllers_scheduler_retries_a_failing_deadline_on_the_same_heap() -> None:
    """The operator's datetime scheduler is the same heap, with the same failure rule."""
    loop = asyncio.get_running_loop()
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    origin = loop.time()

    def clock() -> datetime:
        return epoch + timedelta(seconds=loop.time() - origin)

    scheduler = Scheduler(clock)
    seen: list[float] = []

    async def callback(key: Deadline) -> None:
        seen.append(round((clock() - epoch).total_seconds()))
        if len(seen) == 1:
            raise RuntimeError("apiserver down")

    scheduler.schedule(("sandbox", "ns", "a"), epoch + timedelta(seconds=30))
    scheduler.schedule(("sandbox", "ns", "a"), epoch + timedelta(seconds=40))  # replaces: later is kept
    assert scheduler.due_at(("sandbox", "ns", "a")) == epoch + timedelta(seconds=40)
    task = asyncio.create_task(scheduler.run(callback))
    await asyncio.sleep(500)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert seen == [40, 40 + RETRY]
    assert len(scheduler) == 0
