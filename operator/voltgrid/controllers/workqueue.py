"""A keyed, coalescing, bounded work queue: client-go's workqueue semantics in asyncio.

Watch events for one object are not work items of their own: only the latest state of an object
matters, so a newer item for a queued key replaces the older one (coalescing), and a key is never
handled by two workers at once (an item that arrives while its key is being handled waits for that
to end). The number of waiting keys is bounded: :meth:`WorkQueue.put` waits for room, which pushes
back on the watch stream instead of holding 100,000 object bodies in memory. A failed item is
retried after a per-key exponential backoff unless a newer item for its key came meanwhile. Work only
happens while the ``gate`` is open (this replica is the active one); items wait while it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Generic, TypeVar

from voltgrid.controllers.metrics import OperatorMetrics

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: First delay before a failed item is retried; doubled per consecutive failure of its key.
RETRY_BASE_S: Final = 0.5
#: Upper bound of a failed key's retry delay.
RETRY_MAX_S: Final = 60.0


class WorkQueue(Generic[K, T]):
    """Items by key, handled by ``workers`` concurrent workers calling ``handle(key, item)``."""

    def __init__(
        self,
        handle: Callable[[K, T], Awaitable[None]],
        *,
        workers: int,
        max_pending: int,
        gate: asyncio.Event,
        name: str = "work",
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._handle = handle
        self._workers = workers
        self._max_pending = max_pending
        self._gate = gate
        self._name = name
        self._pending: dict[K, T] = {}
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._retries: dict[K, asyncio.TimerHandle] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._metrics = metrics
        if metrics is not None:
            metrics.watch_depth(name, self.__len__)

    def __len__(self) -> int:
        """Keys waiting or being handled."""
        return len(self._pending.keys() | self._processing)

    async def put(self, key: K, item: T) -> None:
        """Queue ``item`` for ``key`` (replacing a waiting one); waits while the queue is full."""
        while key not in self._pending and len(self._pending) >= self._max_pending:
            self._room.clear()
            await self._room.wait()
        self._enqueue(key, item)

    def _enqueue(self, key: K, item: T) -> None:
        retry = self._retries.pop(key, None)
        if retry is not None:
            retry.cancel()
        fresh = key not in self._pending
        self._pending[key] = item
        self._idle.clear()
        if fresh and key not in self._processing:
            self._ready.put_nowait(key)

    async def join(self) -> None:
        """Wait until nothing is waiting, being handled or scheduled for a retry."""
        await self._idle.wait()

    async def run(self) -> None:
        """Run the workers until cancelled (then cancel the scheduled retries)."""
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(self._workers):
                    group.create_task(self._work(), name=f"{self._name} worker {i}")
        finally:
            for handle in self._retries.values():
                handle.cancel()
            self._retries.clear()

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            await self._gate.wait()
            if key not in self._pending or key in self._processing:  # handled already, or re-queued when done
                continue
            item = self._pending.pop(key)
            self._processing.add(key)
            self._room.set()
            started = asyncio.get_running_loop().time()
            result = "error"
            try:
                await self._handle(key, item)
                result = "ok"
            except asyncio.CancelledError:
                result = "cancelled"
                raise
            except Exception:
                self._schedule_retry(key, item)
            else:
                self._failures.pop(key, None)
            finally:
                if self._metrics is not None:
                    self._metrics.reconciles.labels(queue=self._name, result=result).inc()
                    elapsed = asyncio.get_running_loop().time() - started
                    self._metrics.reconcile_seconds.labels(queue=self._name).observe(elapsed)
                self._processing.discard(key)
                if key in self._pending:
                    self._ready.put_nowait(key)
                self._check_idle()

    def _schedule_retry(self, key: K, item: T) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(RETRY_BASE_S * 2 ** (failures - 1), RETRY_MAX_S)
        logger.exception("%s %s failed (%d in a row); retrying in %.1f s", self._name, key, failures, delay)
        if self._metrics is not None:
            self._metrics.retries.labels(queue=self._name).inc()
        if key in self._pending:  # a newer item came while this one failed: it supersedes the retry
            return
        loop = asyncio.get_running_loop()
        self._retries[key] = loop.call_later(delay, self._retry, key, item)

    def _retry(self, key: K, item: T) -> None:
        self._retries.pop(key, None)
        if key not in self._pending:
            self._enqueue(key, item)

    def _check_idle(self) -> None:
        if not self._pending and not self._processing and not self._retries:
            self._idle.set()
