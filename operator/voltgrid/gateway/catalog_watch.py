"""Keep the gateway's function catalog in sync with the cluster's Function objects.

One paged LIST, then a WATCH from its resourceVersion (with bookmarks), for all Functions the
gateway serves (cluster wide, or one namespace): O(1) work per Function change, none per request.
A WATCH the server ends on its timeout continues from the last version seen, so the Functions are
listed once, not again every few minutes by every gateway replica. A Function the models reject
(it passed the CRD but not a rule only Python checks) is logged and left out, never a crash; an
expired watch (410 Gone) or a dropped connection relists after a short backoff, and Functions
deleted meanwhile are removed. Of the status only the operator's runtime choice is kept (status
updates are the operator's coarse counts: they re-put the entry, nothing more).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from voltgrid.api import constants as c
from voltgrid.api.function import Function, FunctionStatus
from voltgrid.gateway.functions import FunctionCatalog
from voltgrid.registry.kubewatch import REQUEST_TIMEOUT_S, WATCH_TIMEOUT_S, WATCH_TIMEOUTS

logger = logging.getLogger(__name__)

PLURAL: Final = "functions"
#: Seconds between attempts after a failed LIST or WATCH, or a WATCH that ended at once.
RETRY_BACKOFF_S: Final = 2.0
#: Functions per LIST page (a large catalog never arrives as one body).
LIST_PAGE_SIZE: Final = 500


def runtime_status(status: Any) -> FunctionStatus | None:
    """What the data plane reads of a Function's status: the RuntimeClass the operator chose, so that
    the pods the gateway creates run where the operator's do (counts and conditions are ignored)."""
    if not isinstance(status, dict) or not status:
        return None
    chosen = status.get("runtimeClassName")
    return FunctionStatus(runtime_class_name=chosen if isinstance(chosen, str) and chosen else None)


class FunctionWatcher:
    """LIST+WATCH of Function objects into a :class:`FunctionCatalog`."""

    def __init__(self, api: client.ApiClient, catalog: FunctionCatalog, namespace: str | None = None) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._catalog = catalog
        self._namespace = namespace
        self.synced = asyncio.Event()

    def _list_call(self) -> tuple[Any, tuple[Any, ...]]:
        if self._namespace:
            return self._objects.list_namespaced_custom_object, (c.GROUP, c.VERSION, self._namespace, PLURAL)
        return self._objects.list_cluster_custom_object, (c.GROUP, c.VERSION, PLURAL)

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        """Apply one watch event (or a listed object as ADDED) to the catalog."""
        meta = obj.get("metadata", {})
        key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
        if event_type == "DELETED":
            self._catalog.remove(key)
            return
        try:
            function = Function.model_validate({k: v for k, v in obj.items() if k in ("metadata", "spec")})
            function.status = runtime_status(obj.get("status"))
        except ValidationError as e:
            logger.warning("Function %s is not served: %s", key, e.errors()[0].get("msg", e))
            self._catalog.remove(key)
            return
        self._catalog.put(function)

    async def _relist(self) -> str:
        call, args = self._list_call()
        seen = set()
        token: str | None = None
        while True:
            more = {"_continue": token} if token else {}
            page = await call(*args, limit=LIST_PAGE_SIZE, _request_timeout=REQUEST_TIMEOUT_S, **more)
            for obj in page.get("items", []):
                self.apply("ADDED", obj)
                meta = obj.get("metadata", {})
                seen.add(f"{meta.get('namespace', 'default')}/{meta.get('name', '')}")
            token = page.get("metadata", {}).get("continue") or None
            if token is None:
                break
        for entry in list(self._catalog):
            if entry.key not in seen and (not self._namespace or entry.key.startswith(f"{self._namespace}/")):
                self._catalog.remove(entry.key)
        self.synced.set()
        return str(page.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        """One WATCH until the server ends it; the last resourceVersion seen (bookmarks included)."""
        call, args = self._list_call()
        async with watch.Watch() as stream:
            async for event in stream.stream(
                call,
                *args,
                resource_version=version,
                timeout_seconds=WATCH_TIMEOUT_S,
                allow_watch_bookmarks=True,
                _request_timeout=WATCH_TIMEOUTS,
            ):
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self.apply(event["type"], event["object"])
            return str(stream.resource_version or version)

    async def run(self) -> None:
        """Watch until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                version = await self._relist()
                while True:
                    started = loop.time()
                    version = await self._watch(version)
                    if loop.time() - started < RETRY_BACKOFF_S:  # ended at once: not the server's timeout
                        await asyncio.sleep(RETRY_BACKOFF_S)
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status != 410:
                    logger.warning("watching Functions failed (%s %s); relisting", e.status, e.reason)
                    await asyncio.sleep(RETRY_BACKOFF_S)
            except (aiohttp.ClientError, TimeoutError) as e:
                logger.warning("watching Functions failed (%r); relisting", e)
                await asyncio.sleep(RETRY_BACKOFF_S)
            except Exception:
                logger.exception("watching Functions failed; relisting")
                await asyncio.sleep(RETRY_BACKOFF_S)
