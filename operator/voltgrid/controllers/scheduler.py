"""ONE scheduler for every deadline of the control plane (a heap, one task).

Sandbox expiry, deletion after expiry, Session maxLifetime and the idle deadline of each claimed
pod all go here instead of a kopf timer or daemon per object: an object without a deadline costs
nothing, one with a deadline costs a heap entry. Rescheduling a key replaces its deadline (stale
heap entries are skipped lazily); callbacks re-check the object, so a spurious wake-up is harmless.

The heap is the process-wide :class:`voltgrid.registry.scheduler.DeadlineScheduler` (the gateway
runs on it too), with its failure rule: a callback that raises is called again after
:data:`~voltgrid.registry.scheduler.RETRY` seconds. This class only speaks the controllers'
datetimes (their clock is injectable, and wall time is what Kubernetes objects carry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from voltgrid.registry.scheduler import DeadlineScheduler

#: (kind, namespace, name), e.g. ("sandbox", "team-a", "sbx-1").
Deadline = tuple[str, str, str]
Callback = Callable[[Deadline], Awaitable[None]]


class Scheduler:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._callback: Callback | None = None
        self._heap: DeadlineScheduler[Deadline] = DeadlineScheduler(self._on_due, clock=lambda: clock().timestamp())

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, key: Deadline, when: datetime) -> None:
        self._heap.reschedule(key, when.timestamp())

    def cancel(self, key: Deadline) -> None:
        self._heap.cancel(key)

    def due_at(self, key: Deadline) -> datetime | None:
        when = self._heap.due_at(key)
        return None if when is None else datetime.fromtimestamp(when, UTC)

    async def _on_due(self, key: Deadline, now: float) -> None:
        assert self._callback is not None  # only run() starts the heap
        await self._callback(key)

    async def run(self, callback: Callback) -> None:
        """Call ``callback`` for each deadline as it comes due, forever (cancel to stop)."""
        self._callback = callback
        await self._heap.run()
