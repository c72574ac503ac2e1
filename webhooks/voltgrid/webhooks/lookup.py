"""The cluster reads the validating webhook makes for requests from untrusted users.

Why reads at admission and not a cache: they happen only for requests of users who are not Voltgrid
(a tenant's own pods and claims, a ``kubectl exec``), so Voltgrid's cold starts never wait on them, and
a read answers from the apiserver's current state — a Function created a second ago already guards
its claim. A failed read denies the request (the caller turns :class:`LookupError` into a refusal
naming the cause): a request that could not be checked must not pass, as with ``failurePolicy: Fail``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from kubernetes_asyncio import client

from voltgrid.api import constants
from voltgrid.errors import VoltgridError
from voltgrid.webhooks.review import AdmissionRequest
from voltgrid.webhooks.validate import ClusterFacts, Lookups

log = logging.getLogger(__name__)
HTTP_NOT_FOUND = 404


class FactLookupError(VoltgridError):
    """A read the decision needs failed; the request is refused with this message."""


class FactSource(Protocol):
    async def facts(self, request: AdmissionRequest, needs: Lookups) -> ClusterFacts: ...


def storage_claims(objects: list[dict[str, Any]]) -> set[str]:
    """The claims named in ``spec.storage.claimName`` of Functions or Sandboxes."""
    return {
        str(((obj.get("spec") or {}).get("storage") or {}).get("claimName"))
        for obj in objects
        if ((obj.get("spec") or {}).get("storage") or {}).get("claimName")
    }


class KubernetesFacts:
    """:class:`FactSource` from the apiserver (kubernetes_asyncio)."""

    def __init__(self, api: Any) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)

    async def _named_by(self, namespace: str, plural: str) -> set[str]:
        try:
            listing = await self._custom.list_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, plural
            )
        except client.ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:  # the CRD is not installed: nothing names a claim
                return set()
            raise
        return storage_claims(listing.get("items") or [])

    async def _labelled(self, namespace: str) -> set[str]:
        listing = await self._core.list_namespaced_persistent_volume_claim(
            namespace, label_selector=f"{constants.LABEL_SESSION_STORAGE}=true"
        )
        return {claim.metadata.name for claim in listing.items}

    async def facts(self, request: AdmissionRequest, needs: Lookups) -> ClusterFacts:
        claims: set[str] = set()
        labels: dict[str, str] | None = None
        try:
            if needs.session_claims and request.namespace:
                claims = (
                    await self._named_by(request.namespace, "functions")
                    | await self._named_by(request.namespace, "sandboxes")
                    | await self._labelled(request.namespace)
                )
            if needs.target_pod and request.name:
                try:
                    pod = await self._core.read_namespaced_pod(request.name, request.namespace)
                    labels = dict(pod.metadata.labels or {})
                except client.ApiException as exc:
                    if exc.status != HTTP_NOT_FOUND:
                        raise
        except (client.ApiException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise FactLookupError(f"could not check the request against the cluster ({reason}); try again") from exc
        return ClusterFacts(session_claims=frozenset(claims), target_labels=labels)
