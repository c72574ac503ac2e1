"""LIST+WATCH of one resource into a :class:`~voltgrid.controllers.workqueue.WorkQueue`.

This is how the operator follows Functions, instead of through kopf. A Function needs none of
kopf's per-object machinery: its reconcile is idempotent (the computed status is compared with the
stored one), it has no finalizer and no per-object state. At 100,000 Functions that machinery (a
queue and a worker per object, cause detection, handler invocation, diff bookkeeping) was ~75% of
the operator's CPU and over 1 GiB of its memory. Here, as in client-go: a paged LIST, one WATCH from
its resourceVersion with bookmarks, a relist on 410 Gone or on request (:meth:`Informer.resync`),
deletions noticed across a relist; and each object's latest state goes to a bounded, coalescing work
queue, so memory stays flat however many objects exist. Bodies are queued without their
``managedFields`` (the largest part of a stored object, never read by a controller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import aiohttp

from voltgrid.controllers.kube import KubeApiError, KubeClient
from voltgrid.controllers.metrics import OperatorMetrics
from voltgrid.controllers.state import Key, key_of
from voltgrid.controllers.workqueue import WorkQueue

logger = logging.getLogger(__name__)

Json = dict[str, Any]
#: ``handle(body, event_type)``: event_type is None for an object delivered by a LIST.
Handler = Callable[[Json, str | None], Awaitable[None]]

#: Seconds the apiserver keeps one WATCH open before the informer re-watches (from the last version).
WATCH_TIMEOUT_S: Final = 300
#: Seconds between attempts after a failed LIST or WATCH (410 Gone relists at once).
RETRY_BACKOFF_S: Final = 2.0
GONE: Final = 410
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
        self._paths = list(paths)
        self._handle = handle
        self._served = served or (lambda _namespace: True)
        self._name = name
        self.queue: WorkQueue[Key, tuple[str | None, Json]] = WorkQueue(
            self._deliver, workers=workers, max_pending=max_pending, gate=gate, name=name, metrics=metrics
        )
        self._metrics = metrics
        #: Set once every path has been listed and each listed object queued.
        self.synced = asyncio.Event()
        self._listed: set[str] = set()
        self._known: dict[str, set[Key]] = {path: set() for path in self._paths}
        self._restart = asyncio.Event()

    def resync(self) -> None:
        """Relist everything (e.g. this replica just became the active one, or what every object's
        status depends on changed): each object is handled again, deletions meanwhile are noticed."""
        self._restart.set()

    async def _deliver(self, key: Key, item: tuple[str | None, Json]) -> None:
        event_type, body = item
        await self._handle(body, event_type)

    async def run(self) -> None:
        """Follow every path until cancelled."""
        workers = asyncio.create_task(self.queue.run(), name=f"{self._name} queue")
        reason = "start"
        try:
            while True:
                self._restart.clear()
                followers = [
                    asyncio.create_task(self._follow(p, reason), name=f"{self._name} {p}") for p in self._paths
                ]
                reason = "requested"
                restart = asyncio.create_task(self._restart.wait())
                try:
                    await asyncio.wait([*followers, restart, workers], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (*followers, restart):
                        task.cancel()
                    await asyncio.gather(*followers, restart, return_exceptions=True)
                if workers.done():
                    workers.result()  # a crashed worker pool is a bug: surface it
        finally:
            workers.cancel()
            await asyncio.gather(workers, return_exceptions=True)

    async def _follow(self, path: str, reason: str) -> None:
        while True:
            if self._metrics is not None:
                self._metrics.relists.labels(resource=self._name, reason=reason).inc()
            try:
                version = await self._list(path)
                loop = asyncio.get_running_loop()
                while True:  # a WATCH the server ended on its timeout continues from the last version
                    started = loop.time()
                    version = await self._watch(path, version)
                    if loop.time() - started < RETRY_BACKOFF_S:  # ended at once: not the server's timeout
                        await asyncio.sleep(RETRY_BACKOFF_S)
            except KubeApiError as exc:
                if exc.status == GONE:
                    logger.info("%s: watch expired (%s); relisting", self._name, exc)
                    reason = "expired"
                    continue
                reason = "error"
                logger.warning("%s: %s failed (%s); relisting in %ss", self._name, path, exc, RETRY_BACKOFF_S)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                reason = "error"
                logger.warning("%s: %s failed (%r); relisting in %ss", self._name, path, exc, RETRY_BACKOFF_S)
            await asyncio.sleep(RETRY_BACKOFF_S)

    async def _list(self, path: str) -> str:
        seen: set[Key] = set()
        version = ""
        async for page in self._client.list_pages(path):
            for body in page.get("items") or []:
                key = key_of(body)
                if not self._served(key[0]):
                    continue
                seen.add(key)
                await self.queue.put(key, (None, slim(body)))
            version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        for key in self._known[path] - seen:
            await self.queue.put(key, ("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}}))
        self._known[path] = seen
        self._listed.add(path)
        if self._listed.issuperset(self._paths):
            self.synced.set()
        return version

    async def _watch(self, path: str, version: str) -> str:
        params = {"resourceVersion": version, "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_TIMEOUT_S)}
        async for event in self._client.watch(path, params):
            kind, body = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise KubeApiError(int(body.get("code") or 0), str(body.get("reason")), str(body.get("message")))
            version = str((body.get("metadata") or {}).get("resourceVersion") or version)
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # BOOKMARK: only its resourceVersion matters
            key = key_of(body)
            if not self._served(key[0]):
                continue
            if kind == "DELETED":
                self._known[path].discard(key)
            else:
                self._known[path].add(key)
            await self.queue.put(key, (kind, slim(body)))
        return version
