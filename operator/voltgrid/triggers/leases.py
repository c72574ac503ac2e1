"""A cron ledger the dispatcher replicas share: one Kubernetes Lease per cron trigger.

The Lease's annotation holds the last tick handled. A replica claims tick T by replacing the Lease
with T written in, carrying the ``resourceVersion`` it read: the apiserver accepts one of two
replicas racing for the same tick and answers the other 409 Conflict, which then reads T and
stands down. So each tick fires once however many replicas run, and no replica has to be elected.
Requests go through the access layer's :class:`voltgrid.registry.kubeapi.KubeApi` (dicts in and
out), so a Lease replaced is exactly the object read, its ``resourceVersion`` included.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Final

from voltgrid.api import constants
from voltgrid.registry.kubeapi import Json, KubeApi, KubeApiError

ANNOTATION_LAST_TICK: Final = f"{constants.LABEL_PREFIX}last-tick"
ANNOTATION_TRIGGER: Final = f"{constants.LABEL_PREFIX}trigger"
#: Tries of read-then-replace before a claim gives up (each conflict means another replica moved).
CLAIM_TRIES: Final = 5
NOT_FOUND: Final = 404
CONFLICT: Final = 409


def lease_name(trigger: str) -> str:
    """A Lease name for ``<ns>/<fn>/<trigger>``: a DNS name however long the three parts are."""
    return "voltgrid-cron-" + hashlib.sha256(trigger.encode()).hexdigest()[:20]


def _last(lease: Json) -> datetime | None:
    text = ((lease.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_LAST_TICK)
    return datetime.fromisoformat(text) if text else None


class LeaseLedger:
    def __init__(self, api: KubeApi, namespace: str, replica: str) -> None:
        self._api = api
        self.namespace = namespace
        self.replica = replica
        self._collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    async def _read(self, trigger: str) -> Json | None:
        try:
            return await self._api.request("GET", f"{self._collection}/{lease_name(trigger)}")
        except KubeApiError as e:
            if e.status == NOT_FOUND:
                return None
            raise

    async def last(self, trigger: str) -> datetime | None:
        lease = await self._read(trigger)
        return _last(lease) if lease is not None else None

    async def claim(self, trigger: str, tick: datetime) -> bool:
        for _ in range(CLAIM_TRIES):
            lease = await self._read(trigger)
            try:
                if lease is None:
                    await self._api.request("POST", self._collection, body=self._new(trigger, tick))
                    return True
                last = _last(lease)
                if last is not None and last >= tick:
                    return False
                meta = lease.setdefault("metadata", {})
                meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_LAST_TICK: tick.isoformat()}
                lease.setdefault("spec", {})["holderIdentity"] = self.replica
                await self._api.request("PUT", f"{self._collection}/{lease_name(trigger)}", body=lease)
                return True
            except KubeApiError as e:
                if e.status != CONFLICT:  # Conflict (stale resourceVersion) or AlreadyExists: read again
                    raise
        return False

    def _new(self, trigger: str, tick: datetime) -> Json:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": lease_name(trigger),
                "labels": {constants.LABEL_MANAGED: "true"},
                "annotations": {ANNOTATION_LAST_TICK: tick.isoformat(), ANNOTATION_TRIGGER: trigger},
            },
            "spec": {"holderIdentity": self.replica},
        }
