"""ONE deadline heap and one task for every timer of a process (the gateway's and the operator's).

A task or ``call_later`` handle per session would cost about a kilobyte each and a million of them
would swamp the loop; a heap entry costs a tuple. Entries are *lazy*: touching a session only
updates its record, and when an entry comes due the callback says whether the key is really due
(and acts) or returns the later deadline it should be looked at again. So a busy session costs no
heap work per request, and each key has at most one live entry.

The gateway's lifecycle and the operator's controllers (through
:class:`voltgrid.controllers.scheduler.Scheduler`, which speaks datetimes) both run on this class.

**A failing callback is retried after** :data:`RETRY` **seconds, never dropped.** Every key here
stands for something that must end (a session's idle timeout, a Sandbox's expiry, an idle pod): a
key dropped after one exception would leave its session, seat or pod alive for good, with nothing
left to notice. A retry costs one logged traceback a minute while the fault lasts, recovers by
itself when the fault was transient (an apiserver hiccup), and a callback that meanwhile scheduled
the key earlier keeps that earlier look.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Generic, TypeVar, cast

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

#: Callback for a due key: return a new deadline to look again, or None to forget the key.
#: It may be a coroutine function (``async def``); the scheduler awaits it before the next key.
DueCallback = Callable[[K, float], "float | Awaitable[float | None] | None"]
#: At most this many due keys are handled before yielding to the event loop.
BATCH: Final = 1000
#: A callback that raised is called again for its key after this many seconds.
RETRY: Final = 60.0


class DeadlineScheduler(Generic[K]):
    """Calls ``on_due(key, now)`` at (or just after) each key's deadline.

    ``clock`` gives the time deadlines are in (default: the running loop's clock); the scheduler
    sleeps the difference on the loop, so a clock must advance with it (wall time does).
    """

    def __init__(
        self, on_due: DueCallback[K], *, clock: Callable[[], float] | None = None, retry: float = RETRY
    ) -> None:
        self._on_due = on_due
        #: Decided once: asking each result whether it is awaitable would cost more than the heap work.
        self._awaits = inspect.iscoroutinefunction(on_due)
        self._clock = clock
        self._retry = retry
        self._heap: list[tuple[float, int, K]] = []
        self._scheduled: dict[K, float] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._scheduled)

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def schedule(self, key: K, deadline: float) -> None:
        """Look at ``key`` no later than ``deadline``: an earlier existing entry is kept (it re-arms
        lazily through its callback's return value)."""
        current = self._scheduled.get(key)
        if current is not None and current <= deadline:
            return
        self._push(key, deadline)

    def reschedule(self, key: K, deadline: float) -> None:
        """Look at ``key`` exactly at ``deadline``, replacing any entry (earlier or later)."""
        if self._scheduled.get(key) != deadline:
            self._push(key, deadline)

    def _push(self, key: K, deadline: float) -> None:
        self._scheduled[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        if self._heap[0][2] == key:
            self._wakeup.set()

    def cancel(self, key: K) -> None:
        """Forget ``key``; its heap entry is dropped when it comes due."""
        self._scheduled.pop(key, None)

    def due_at(self, key: K) -> float | None:
        return self._scheduled.get(key)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="voltgrid-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_due(self, now: float) -> int:
        """Handle every entry due at ``now`` (at most :data:`BATCH`); returns how many were handled."""
        handled = 0
        heap = self._heap
        while heap and heap[0][0] <= now and handled < BATCH:
            deadline, _, key = heapq.heappop(heap)
            if self._scheduled.get(key) != deadline:
                continue  # cancelled, or superseded
            del self._scheduled[key]
            handled += 1
            try:
                result = self._on_due(key, now)
                again = await cast("Awaitable[float | None]", result) if self._awaits else cast("float | None", result)
            except Exception:
                logger.exception("timer callback failed for %s; retrying in %ss", key, self._retry)
                self.schedule(key, now + self._retry)
                continue
            if again is not None:
                self.schedule(key, max(again, now))
        return handled

    async def run(self) -> None:
        """Handle deadlines as they come due, forever (cancel to stop; :meth:`start` runs it)."""
        while True:
            self._wakeup.clear()
            if await self.run_due(self.now()) >= BATCH:
                await asyncio.sleep(0)
                continue
            delay = self._heap[0][0] - self.now() if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)
