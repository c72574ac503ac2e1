"""ONE scheduler for every deadline of the control plane (a heap, one task).

Sandbox expiry, deletion after expiry, Session maxLifetime and the idle deadline of each claimed
pod all go here instead of a kopf timer or daemon per object: an object without a deadline costs
nothing, one with a deadline costs a heap entry. Rescheduling a key replaces its deadline (stale
heap entries are skipped lazily); callbacks re-check the object, so a spurious wake-up is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Final

logger = logging.getLogger(__name__)

#: (kind, namespace, name), e.g. ("sandbox", "team-a", "sbx-1").
Deadline = tuple[str, str, str]
Callback = Callable[[Deadline], Awaitable[None]]
#: A failed callback is tried again after this long.
_RETRY: Final = timedelta(seconds=60)


class Scheduler:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._heap: list[tuple[datetime, int, Deadline]] = []
        self._due: dict[Deadline, datetime] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, key: Deadline, when: datetime) -> None:
        if self._due.get(key) == when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if self._heap[0][2] == key:
            self._wakeup.set()

    def cancel(self, key: Deadline) -> None:
        self._due.pop(key, None)

    def due_at(self, key: Deadline) -> datetime | None:
        return self._due.get(key)

    def _pop_due(self) -> list[Deadline] | float | None:
        """Keys due now, or seconds until the next deadline, or None when there is none."""
        now = self._clock()
        out: list[Deadline] = []
        while self._heap:
            when, _, key = self._heap[0]
            if self._due.get(key) != when:
                heapq.heappop(self._heap)  # cancelled or rescheduled
                continue
            if when > now:
                return out or (when - now).total_seconds()
            heapq.heappop(self._heap)
            del self._due[key]
            out.append(key)
        return out or None

    async def run(self, callback: Callback) -> None:
        """Call ``callback`` for each deadline as it comes due, forever (cancel to stop)."""
        while True:
            due = self._pop_due()
            if isinstance(due, list):
                for key in due:
                    try:
                        await callback(key)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("deadline %s failed; retrying in a minute", key)
                        self.schedule(key, self._clock() + _RETRY)
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=due)
