"""One deadline heap and one task for every idle and expiry timer of the process.

A task or ``call_later`` handle per session would cost about a kilobyte each and a million of them
would swamp the loop; a heap entry costs a tuple. Entries are *lazy*: touching a session only
updates its record, and when an entry comes due the callback says whether the key is really due
(and acts) or returns the later deadline it should be looked at again. So a busy session costs no
heap work per request, and each key has at most one live entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)

#: Callback for a due key: return a new deadline to look again, or None to forget the key.
DueCallback = Callable[[str, float], "float | None"]
#: At most this many due keys are handled before yielding to the event loop.
BATCH: Final = 1000


class DeadlineScheduler:
    """Calls ``on_due(key, now)`` at (or just after) each key's deadline."""

    def __init__(self, on_due: DueCallback) -> None:
        self._on_due = on_due
        self._heap: list[tuple[float, int, str]] = []
        self._scheduled: dict[str, float] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._scheduled)

    def schedule(self, key: str, deadline: float) -> None:
        """Look at ``key`` at ``deadline``; an earlier existing entry is kept (it re-arms lazily)."""
        current = self._scheduled.get(key)
        if current is not None and current <= deadline:
            return
        self._scheduled[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        if self._heap[0][2] == key:
            self._wakeup.set()

    def cancel(self, key: str) -> None:
        """Forget ``key``; its heap entry is dropped when it comes due."""
        self._scheduled.pop(key, None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="voltgrid-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def run_due(self, now: float) -> int:
        """Handle every entry due at ``now`` (at most :data:`BATCH`); returns how many were handled."""
        handled = 0
        heap = self._heap
        while heap and heap[0][0] <= now and handled < BATCH:
            deadline, _, key = heapq.heappop(heap)
            if self._scheduled.get(key) != deadline:
                continue  # cancelled, or superseded by an earlier entry
            del self._scheduled[key]
            handled += 1
            try:
                again = self._on_due(key, now)
            except Exception:
                logger.exception("timer callback failed for %s", key)
                continue
            if again is not None:
                self.schedule(key, max(again, now))
        return handled

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            if self.run_due(loop.time()) >= BATCH:
                await asyncio.sleep(0)
                continue
            delay = self._heap[0][0] - loop.time() if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)
