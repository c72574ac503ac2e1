"""The cluster side of :mod:`voltgrid.gateway.sandboxes`: pool pods and templates followed through
the access layer's LIST+WATCH, and the pool's after-the-fact writes (merge patches, deletes).

Only pool pods are listed (label ``voltgrid.dev/role=pool``), cluster wide or in one namespace, so a
replica's memory holds the pools and nothing else; the watch resumes from its last version, so a
claimed pod's annotations reach every replica within a watch event's latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from voltgrid.api import constants, pool
from voltgrid.api.podspec import Role
from voltgrid.gateway.sandboxes import Json, SandboxPools
from voltgrid.registry.kubeapi import KubeApi, KubeApiError, Reflector

MERGE_PATCH: Final = "application/merge-patch+json"
NOT_FOUND: Final = 404


def _where(namespace: str | None) -> str:
    return f"/namespaces/{namespace}" if namespace else ""


class KubePoolPods:
    """:class:`~voltgrid.gateway.sandboxes.PoolPods` on the Kubernetes API."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def mark_claimed(self, namespace: str, pod: str, labels: Mapping[str, str], annotations: Json) -> None:
        patch = {"metadata": {"labels": dict(labels), "annotations": annotations}}
        await self._api.request(
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod}", body=patch, content_type=MERGE_PATCH
        )

    async def burn(self, namespace: str, pod: str) -> None:
        try:
            await self._api.request(
                "DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod}", body={"gracePeriodSeconds": 0}
            )
        except KubeApiError as exc:
            if exc.status != NOT_FOUND:
                raise

    async def set_waiting(self, namespace: str, template: str, waiting: int) -> None:
        patch = {"metadata": {"annotations": {pool.ANNOTATION_WAITING: str(waiting) if waiting else None}}}
        path = f"/apis/{constants.API_VERSION}/namespaces/{namespace}/sandboxtemplates/{template}"
        await self._api.request("PATCH", path, body=patch, content_type=MERGE_PATCH)


class PoolWatcher:
    """LIST+WATCH of pool pods and SandboxTemplates into a :class:`SandboxPools`."""

    def __init__(self, api: KubeApi, pools: SandboxPools, namespace: str | None = None) -> None:
        self._pools = pools
        where = _where(namespace)
        self._templates = Reflector(
            api,
            f"/apis/{constants.API_VERSION}{where}/sandboxtemplates",
            self._template,
            name="SandboxTemplates",
        )
        self._pods = Reflector(
            api,
            f"/api/v1{where}/pods",
            self._pod,
            name="pool pods",
            params={"labelSelector": f"{constants.LABEL_ROLE}={Role.POOL}"},
        )

    async def _template(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self._pools.apply_template(event_type or "ADDED", obj)

    async def _pod(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self._pools.apply_pod(event_type or "ADDED", obj)

    async def run(self) -> None:
        """Watch until cancelled (templates first, so pods find their template's TTLs)."""
        templates = asyncio.get_running_loop().create_task(self._templates.run(), name="voltgrid-sandboxtemplates")
        try:
            await self._templates.synced.wait()
            await self._pods.run()
        finally:
            templates.cancel()
            await asyncio.gather(templates, return_exceptions=True)
