"""What the janitor asks the cluster: which sessions are live, and each Function's retention.

Why a Protocol with a snapshot: the janitor's decisions are pure (directories + snapshot + clock in,
decisions out) and are tested with a fake; the Kubernetes implementation is a handful of paged LISTs
per run (the access layer's, :mod:`voltgrid.registry.kubeapi`) — never one request per directory,
whatever the number of sessions.

Live means: a pod labelled ``voltgrid.dev/session`` exists in the namespace (running, pending or
terminating — any pod may still write), or a ``Session`` object for it exists whose phase is not
``Expired`` (a declared always-on session keeps its memory while it has no pod). Liveness is keyed by
``(namespace, session id)`` without the function: if in doubt, keep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from voltgrid.api import constants
from voltgrid.api.common import parse_duration
from voltgrid.registry.kubeapi import KubeApi, KubeApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    """A snapshot: live ``(namespace, session)`` pairs and ``(namespace, function) → retention``."""

    live: frozenset[tuple[str, str]] = frozenset()
    retention: dict[tuple[str, str], timedelta] = field(default_factory=dict)


class SessionCatalog(Protocol):
    async def snapshot(self) -> Catalog: ...


class KubernetesCatalog:
    """:class:`SessionCatalog` from pods, Session and Function objects."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def _custom_objects(self, plural: str) -> list[dict[str, Any]]:
        try:
            return await self._api.list(f"/apis/{constants.API_VERSION}/{plural}")
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            log.warning("%s.%s is not installed; no %s taken into account", plural, constants.GROUP, plural)
        return []

    async def snapshot(self) -> Catalog:
        live: set[tuple[str, str]] = set()
        async for page in self._api.list_pages("/api/v1/pods", {"labelSelector": constants.LABEL_SESSION}):
            for pod in page.get("items") or []:
                meta = pod.get("metadata") or {}
                live.add((meta.get("namespace", ""), (meta.get("labels") or {}).get(constants.LABEL_SESSION, "")))
        for obj in await self._custom_objects("sessions"):
            if (obj.get("status") or {}).get("phase") != "Expired":
                meta = obj.get("metadata") or {}
                live.add((meta.get("namespace", ""), (obj.get("spec") or {}).get("sessionId") or meta.get("name", "")))
        retention: dict[tuple[str, str], timedelta] = {}
        for obj in await self._custom_objects("functions"):
            meta, storage = obj.get("metadata") or {}, (obj.get("spec") or {}).get("storage") or {}
            if storage.get("retention"):
                try:
                    retention[(meta.get("namespace", ""), meta.get("name", ""))] = parse_duration(storage["retention"])
                except ValueError as exc:
                    log.warning("Function %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
        return Catalog(live=frozenset(live), retention=retention)
