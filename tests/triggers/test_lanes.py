"""Ordering per key: same key one after another in arrival order, different keys concurrently."""

from __future__ import annotations

import asyncio

import pytest

from voltgrid.triggers.lanes import Lanes


@pytest.mark.looptime
async def test_same_key_in_order_other_keys_concurrently() -> None:
    lanes = Lanes()
    log: list[str] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    def work(name: str, seconds: float) -> asyncio.Task[None]:
        async def body() -> None:
            await asyncio.sleep(seconds)
            log.append(name)

        key = name[0] if name[0] != "-" else None
        return asyncio.create_task(lanes.run(key, body))

    # a1 is slow: a2 and a3 must wait for it, b1 and the key-less one must not.
    tasks = [work("a1", 3), work("a2", 1), work("b1", 1), work("a3", 0), work("-x", 0)]
    await asyncio.gather(*tasks)
    # a3 takes no time yet comes after a2: it waits for its lane, not for its own work.
    assert log == ["-x", "b1", "a1", "a2", "a3"]
    assert loop.time() - start == pytest.approx(4)  # a1 + a2 serially; b1 alongside
    assert len(lanes) == 0  # drained lanes hold nothing


@pytest.mark.looptime
async def test_a_failure_does_not_block_the_lane() -> None:
    lanes = Lanes()

    async def boom() -> None:
        raise RuntimeError("handler failed")

    async def ok() -> str:
        return "ok"

    first = asyncio.create_task(lanes.run("k", boom))
    second = asyncio.create_task(lanes.run("k", ok))
    with pytest.raises(RuntimeError):
        await first
    assert await second == "ok"
