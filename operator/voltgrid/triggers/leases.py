"""A cron ledger the dispatcher replicas share: one Kubernetes Lease per cron trigger.

The Lease's annotation holds the last tick handled. A replica claims tick T by replacing the Lease
with T written in, carrying the ``resourceVersion`` it read: the apiserver accepts one of two
replicas racing for the same tick and answers the other 409 Conflict, which then reads T and
stands down. So each tick fires once however many replicas run, and no replica has to be elected.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Final

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from voltgrid.api import constants

ANNOTATION_LAST_TICK: Final = f"{constants.LABEL_PREFIX}last-tick"
ANNOTATION_TRIGGER: Final = f"{constants.LABEL_PREFIX}trigger"
#: Tries of read-then-replace before a claim gives up (each conflict means another replica moved).
CLAIM_TRIES: Final = 5


def lease_name(trigger: str) -> str:
    """A Lease name for ``<ns>/<fn>/<trigger>``: a DNS name however long the three parts are."""
    return "voltgrid-cron-" + hashlib.sha256(trigger.encode()).hexdigest()[:20]


def _last(lease: client.V1Lease) -> datetime | None:
    text = (lease.metadata.annotations or {}).get(ANNOTATION_LAST_TICK)
    return datetime.fromisoformat(text) if text else None


class LeaseLedger:
    def __init__(self, api: client.ApiClient, namespace: str, replica: str) -> None:
        self._leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.replica = replica

    async def _read(self, trigger: str) -> client.V1Lease | None:
        try:
            return await self._leases.read_namespaced_lease(lease_name(trigger), self.namespace)
        except ApiException as e:
            if e.status == 404:
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
                    await self._leases.create_namespaced_lease(self.namespace, self._new(trigger, tick))
                    return True
                last = _last(lease)
                if last is not None and last >= tick:
                    return False
                lease.metadata.annotations = {
                    **(lease.metadata.annotations or {}),
                    ANNOTATION_LAST_TICK: tick.isoformat(),
                }
                lease.spec.holder_identity = self.replica
                await self._leases.replace_namespaced_lease(lease_name(trigger), self.namespace, lease)
                return True
            except ApiException as e:
                if e.status != 409:  # Conflict (stale resourceVersion) or AlreadyExists: read again
                    raise
        return False

    def _new(self, trigger: str, tick: datetime) -> client.V1Lease:
        meta = client.V1ObjectMeta(
            name=lease_name(trigger),
            labels={constants.LABEL_MANAGED: "true"},
            annotations={ANNOTATION_LAST_TICK: tick.isoformat(), ANNOTATION_TRIGGER: trigger},
        )
        return client.V1Lease(metadata=meta, spec=client.V1LeaseSpec(holder_identity=self.replica))
