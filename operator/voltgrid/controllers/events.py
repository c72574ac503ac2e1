"""Kubernetes Events for what a user must see (no runtime, expired, scaled to zero, ...).

Posted through the operator's client so tests see them on the fake API like any other request.
A failure to post an Event is logged, never raised: an Event is a courtesy, not a state change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from voltgrid.api import constants
from voltgrid.controllers.kube import KubeApiError, KubeClient, core_path

logger = logging.getLogger(__name__)

COMPONENT: Final = "voltgrid-operator"
NORMAL: Final = "Normal"
WARNING: Final = "Warning"
_MAX_MESSAGE: Final = 1024


def object_ref(body: dict[str, Any], kind: str, api_version: str = constants.API_VERSION) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
    }


class EventRecorder:
    def __init__(self, client: KubeClient, clock: Callable[[], datetime]) -> None:
        self._client = client
        self._clock = clock

    async def post(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        now = self._clock().isoformat().replace("+00:00", "Z")
        namespace = ref.get("namespace") or "default"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.get('name')}.", "namespace": namespace},
            "involvedObject": ref,
            "type": type_,
            "reason": reason,
            "message": message[:_MAX_MESSAGE],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._client.create(core_path("events", namespace), body)
        except (KubeApiError, OSError) as exc:
            logger.warning("could not post event %s on %s: %s", reason, ref.get("name"), exc)
