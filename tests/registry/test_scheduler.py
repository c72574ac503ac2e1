"""The one deadline heap: fires on time in virtual time, re-arms lazily, never a task per key."""

from __future__ import annotations

import asyncio

import pytest

from voltgrid.registry.scheduler import DeadlineScheduler


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


def test_a_failing_callback_does_not_stop_the_others() -> None:
    seen = []

    def on_due(key: str, now: float) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("boom")

    sched = DeadlineScheduler(on_due)
    sched.schedule("bad", 1)
    sched.schedule("good", 2)
    assert sched.run_due(10) == 2 and seen == ["bad", "good"]
