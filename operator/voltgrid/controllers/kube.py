"""The operator's Kubernetes client: the access layer's (:mod:`voltgrid.registry.kubeapi`), logged in
with kopf's own credentials.

kopf logs in once (``@kopf.on.login``) and hands us the same :class:`kopf.ConnectionInfo`, adapted
here to the layer's :class:`~voltgrid.registry.kubeapi.Credentials`, so the operator has one
identity and one auth path, and the layer below never sees a kopf type. Dicts in, dicts out; every
manifest already comes from a pure builder as a dict. Idempotence is built in: create answers
``None`` on 409 (the object exists: a retried create after a crash), delete and patch answer
``None``/``False`` on 404.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Final

import kopf

from voltgrid.api import constants
from voltgrid.registry.kubeapi import KubeApi, KubeApiError

__all__ = ["KopfCredentials", "KubeApiError", "KubeClient", "core_path", "group_path", "voltgrid_path"]

Json = dict[str, Any]

MERGE_PATCH: Final = "application/merge-patch+json"
#: Also the field manager the apiserver records in ``managedFields`` for the operator's writes.
USER_AGENT: Final = "voltgrid-operator"


class KopfCredentials:
    """kopf's login (:class:`kopf.ConnectionInfo`) as the access layer's :class:`Credentials`."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self._info = info

    @property
    def server(self) -> str:
        return self._info.server

    async def headers(self) -> Mapping[str, str]:
        return self._info.as_http_headers()

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self._info.server.startswith("https"):
            return True
        return False if self._info.insecure else self._info.as_ssl_context()


def core_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    return _path("/api/v1", plural, namespace, name)


def group_path(group_version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    return _path(f"/apis/{group_version}", plural, namespace, name)


def voltgrid_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    return group_path(constants.API_VERSION, plural, namespace, name)


def _path(prefix: str, plural: str, namespace: str | None, name: str | None) -> str:
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class KubeClient(KubeApi):
    """The access layer's client, (re)configured by the operator's login handler, with the
    idempotent writes the controllers use."""

    def __init__(self, info: kopf.ConnectionInfo | None = None) -> None:
        super().__init__(KopfCredentials(info) if info is not None else None, user_agent=USER_AGENT)

    def login(self, info: kopf.ConnectionInfo) -> None:
        """Use new credentials from the next request on (kopf re-logs in when they expire)."""
        self.configure(KopfCredentials(info))

    async def get(self, path: str) -> Json | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Json) -> Json | None:
        """The created object, or None when one of that name already exists (409)."""
        try:
            return await self.request("POST", path, body=body)
        except KubeApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def patch(self, path: str, body: Json) -> Json | None:
        """JSON merge patch; None when the object is gone."""
        try:
            return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, path: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self.request("DELETE", path, body={"propagationPolicy": "Background"})
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
