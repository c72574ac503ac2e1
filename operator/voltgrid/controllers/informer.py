"""LIST+WATCH of Functions into a :class:`~voltgrid.controllers.workqueue.WorkQueue`.

This is how the operator follows Functions, instead of through kopf. A Function needs none of
kopf's per-object machinery: its reconcile is idempotent (the computed status is compared with the
stored one), it has no finalizer and no per-object state. At 100,000 Functions that machinery (a
queue and a worker per object, cause detection, handler invocation, diff bookkeeping) was ~75% of
the operator's CPU and over 1 GiB of its memory. Here each path is followed by the access layer's
one LIST+WATCH loop (:class:`voltgrid.registry.kubeapi.Reflector`: paged LIST, WATCH with bookmarks
from the last version, relist on 410 Gone, error, silence or request, deletions noticed across a
relist); each object's latest state goes to a bounded, coalescing work queue, so memory stays flat
however many objects exist. Bodies are queued without their ``managedFields`` (the largest part of
a stored object, never read by a controller).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from voltgrid.controllers.kube import KubeClient
from voltgrid.controllers.metrics import OperatorMetrics
from voltgrid.controllers.state import Key
from voltgrid.controllers.workqueue import WorkQueue
from voltgrid.registry.kubeapi import Reflector, key_of

Json = dict[str, Any]
#: ``handle(body, event_type)``: event_type is None for an object delivered by a LIST.
Handler = Callable[[Json, str | None], Awaitable[None]]

LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"


def slim(body: Json) -> Json:
    """The object without what no controller reads and that makes up most of its size."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**body, "metadata": meta}


class Informer:
    """Follows ``paths`` (collection URLs) and calls ``handle`` with each object's latest state;
    ``served`` filters by namespace when a path is cluster-wide but the operator serves a pattern."""

    def __init__(
        self,
        client: KubeClient,
        paths: Sequence[str],
        handle: Handler,
        *,
        served: Callable[[str], bool] | None,
        gate: asyncio.Event,
        workers: int,
        max_pending: int,
        name: str,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._client = client
        self._handle = handle
        self._name = name
        self.queue: WorkQueue[Key, tuple[str | None, Json]] = WorkQueue(
            self._deliver, workers=workers, max_pending=max_pending, gate=gate, name=name, metrics=metrics
        )
        served_namespace = served or (lambda _namespace: True)
        self._reflectors = [
            Reflector(
                client,
                path,
                self._enqueue,
                name=f"{name} {path}",
                accept=lambda key: served_namespace(key[0]),
                listed=self._listed,
                relisting=self._relisting(metrics),
            )
            for path in paths
        ]
        #: Set once every path has been listed and each listed object queued.
        self.synced = asyncio.Event()

    def _relisting(self, metrics: OperatorMetrics | None) -> Callable[[str], None] | None:
        if metrics is None:
            return None
        return lambda reason: metrics.relists.labels(resource=self._name, reason=reason).inc()

    def _listed(self) -> None:
        if all(r.synced.is_set() for r in self._reflectors):
            self.synced.set()

    def resync(self) -> None:
        """Relist everything (e.g. this replica just became the active one, or what every object's
        status depends on changed): each object is handled again, deletions meanwhile are noticed."""
        for reflector in self._reflectors:
            reflector.resync()

    async def _enqueue(self, event_type: str | None, body: Json) -> None:
        await self.queue.put(key_of(body), (event_type, slim(body)))

    async def _deliver(self, key: Key, item: tuple[str | None, Json]) -> None:
        event_type, body = item
        await self._handle(body, event_type)

    async def run(self) -> None:
        """Follow every path until cancelled (a crashed worker pool is a bug: it is raised)."""
        tasks = [asyncio.create_task(self.queue.run(), name=f"{self._name} queue")]
        tasks += [asyncio.create_task(r.run(), name=f"{self._name} reflector") for r in self._reflectors]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
