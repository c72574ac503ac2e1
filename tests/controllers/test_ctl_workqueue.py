"""The keyed work queue: coalescing, one worker per key, bounded waiting, retries, the gate."""

from __future__ import annotations

import asyncio

import pytest
from ctlfakes import eventually

from bgtask import background
from voltgrid.controllers.workqueue import RETRY_BASE_S, WorkQueue


class Recorder:
    """A handler that records (key, item) and can be told to block or fail."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, int]] = []
        self.running: set[str] = set()
        self.overlaps = 0
        self.release = asyncio.Event()
        self.release.set()
        self.fail_times = 0

    async def __call__(self, key: str, item: int) -> None:
        if key in self.running:
            self.overlaps += 1
        self.running.add(key)
        try:
            await self.release.wait()
            if self.fail_times:
                self.fail_times -= 1
                raise RuntimeError("apiserver said no")
            self.handled.append((key, item))
        finally:
            self.running.discard(key)


def open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate


async def test_a_newer_item_replaces_a_waiting_one() -> None:
    rec = Recorder()
    queue: WorkQueue[str, int] = WorkQueue(rec, workers=4, max_pending=10, gate=open_gate())
    for version in range(5):
        await queue.put("a", version)
    await queue.put("b", 1)
    async with background(queue.run()):
        await asyncio.wait_for(queue.join(), 5)
    assert sorted(rec.handled) == [("a", 4), ("b", 1)]


async def test_an_item_for_a_key_being_handled_waits_for_it() -> None:
    rec = Recorder()
    rec.release.clear()
    queue: WorkQueue[str, int] = WorkQueue(rec, workers=4, max_pending=10, gate=open_gate())
    async with background(queue.run()):
        await queue.put("a", 1)
        await eventually(lambda: "a" in rec.running)
        await queue.put("a", 2)
        await queue.put("a", 3)
        await asyncio.sleep(0.1)
        assert rec.overlaps == 0 and len(queue) == 1
        rec.release.set()
        await asyncio.wait_for(queue.join(), 5)
    assert rec.handled == [("a", 1), ("a", 3)]
    assert rec.overlaps == 0


async def test_put_waits_for_room_but_a_waiting_key_is_always_replaced() -> None:
    rec = Recorder()
    gate = asyncio.Event()  # closed: nothing is handled, so nothing leaves the queue
    queue: WorkQueue[str, int] = WorkQueue(rec, workers=2, max_pending=2, gate=gate)
    async with background(queue.run()):
        await queue.put("a", 1)
        await queue.put("b", 1)
        await asyncio.wait_for(queue.put("a", 2), 1)  # replacing never needs room
        third = asyncio.create_task(queue.put("c", 1))
        await asyncio.sleep(0.2)
        assert not third.done()
        gate.set()
        await asyncio.wait_for(third, 5)
        await asyncio.wait_for(queue.join(), 5)
    assert sorted(rec.handled) == [("a", 2), ("b", 1), ("c", 1)]


async def test_a_closed_gate_holds_every_item() -> None:
    rec = Recorder()
    gate = asyncio.Event()
    queue: WorkQueue[str, int] = WorkQueue(rec, workers=2, max_pending=10, gate=gate)
    async with background(queue.run()):
        await queue.put("a", 1)
        await asyncio.sleep(0.5)
        assert rec.handled == []
        gate.set()
        await asyncio.wait_for(queue.join(), 5)
    assert rec.handled == [("a", 1)]


@pytest.mark.looptime
async def test_a_failed_item_is_retried_with_growing_backoff() -> None:
    rec = Recorder()
    rec.fail_times = 3
    queue: WorkQueue[str, int] = WorkQueue(rec, workers=1, max_pending=10, gate=open_gate())
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with background(queue.run()):
        await queue.put("a", 1)
        await asyncio.wait_for(queue.join(), 60)
    assert rec.handled == [("a", 1)]
    assert loop.time() - start == pytest.approx(RETRY_BASE_S * (1 + 2 + 4), abs=0.05)


@pytest.mark.looptime
async def test_a_newer_item_supersedes_a_scheduled_retry() -> None:
    rec = Recorder()
    rec.fail_times = 1
    queue: WorkQueue[str, int] = WorkQueue(rec, workers=1, max_pending=10, gate=open_gate())
    async with background(queue.run()):
        await queue.put("a", 1)
        await eventually(lambda: rec.fail_times == 0)
        await queue.put("a", 2)
        await asyncio.wait_for(queue.join(), 60)
        await asyncio.sleep(RETRY_BASE_S * 4)  # the cancelled retry never fires
    assert rec.handled == [("a", 2)]
