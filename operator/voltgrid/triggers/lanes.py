"""Ordering per key: events sharing a session key are delivered one after another, in arrival order.

Events of different keys (and key-less ones) run concurrently up to the consumer's prefetch. A lane
is a chain of futures: each event waits for the one before it with the same key, so no lane holds a
task or a queue once it drains.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Lanes:
    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._tails)

    async def run(self, key: str | None, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` after every earlier ``run`` of the same key finished (at once when key is None).

        The caller must call ``run`` in arrival order; the lane is taken before the first await.
        """
        if key is None:
            return await work()
        before = self._tails.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = mine
        try:
            if before is not None:
                await asyncio.shield(before)
            return await work()
        finally:
            mine.set_result(None)
            if self._tails.get(key) is mine:
                del self._tails[key]
