"""Keep the gateway's function catalog in sync with the cluster's Function objects.

The access layer's one LIST+WATCH loop (:class:`voltgrid.registry.kubeapi.Reflector`) follows all
Functions the gateway serves (cluster wide, or one namespace): a paged LIST once, then WATCHes with
bookmarks that continue from the last version, so each gateway replica lists once, not every few
minutes; an expired watch (410 Gone), an error or a silent connection relists, and Functions deleted
meanwhile are removed. O(1) work per Function change, none per request. A Function the models
reject (it passed the CRD but not a rule only Python checks) is logged and left out, never a crash.
Of the status only the operator's runtime choice is kept (status updates are the operator's coarse
counts: they re-put the entry, nothing more).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from pydantic import ValidationError

from voltgrid.api import constants
from voltgrid.api.function import Function, FunctionStatus
from voltgrid.gateway.functions import FunctionCatalog
from voltgrid.registry.kubeapi import KubeApi, Reflector

logger = logging.getLogger(__name__)

PLURAL: Final = "functions"


def runtime_status(status: Any) -> FunctionStatus | None:
    """What the data plane reads of a Function's status: the RuntimeClass the operator chose, so that
    the pods the gateway creates run where the operator's do (counts and conditions are ignored)."""
    if not isinstance(status, dict) or not status:
        return None
    chosen = status.get("runtimeClassName")
    return FunctionStatus(runtime_class_name=chosen if isinstance(chosen, str) and chosen else None)


class FunctionWatcher:
    """LIST+WATCH of Function objects into a :class:`FunctionCatalog`."""

    def __init__(self, api: KubeApi, catalog: FunctionCatalog, namespace: str | None = None) -> None:
        self._catalog = catalog
        where = f"/namespaces/{namespace}" if namespace else ""
        self._reflector = Reflector(
            api, f"/apis/{constants.API_VERSION}{where}/{PLURAL}", self._handle, name="Functions"
        )
        #: Set once the Functions were listed: the gateway is ready to route only then.
        self.synced: asyncio.Event = self._reflector.synced

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

    async def _handle(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self.apply(event_type or "ADDED", obj)

    async def run(self) -> None:
        """Watch until cancelled."""
        await self._reflector.run()
