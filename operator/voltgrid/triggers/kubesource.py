"""Functions and broker URLs from the cluster, for ``voltgrid triggers`` running in it.

Each load LISTs the Functions of every namespace and reads the Secrets their queue triggers name
(one GET per Secret per load). A LIST every few seconds is what a dispatcher needs: trigger
changes are rare and a few seconds late is fine, and a relist never misses a change the way a
watch that lost its connection can. An invalid Function is skipped and named in the log.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from voltgrid.api import constants
from voltgrid.api.function import Function
from voltgrid.api.triggers import SecretKeyRef, TriggerType
from voltgrid.registry.kubeapi import REQUEST_TIMEOUT_S

log = logging.getLogger(__name__)

Secrets = dict[tuple[str, str, str], str]  # (namespace, secret, key) -> value


class KubeSource:
    def __init__(self, api: client.ApiClient) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    async def load(self) -> tuple[list[Function], Secrets]:
        listed: Any = await self._objects.list_cluster_custom_object(
            constants.GROUP, constants.VERSION, "functions", _request_timeout=REQUEST_TIMEOUT_S
        )
        functions = []
        for item in listed.get("items", []):
            try:
                functions.append(Function.model_validate(item))
            except ValidationError as e:
                meta = item.get("metadata", {})
                log.error("Function %s/%s skipped: %s", meta.get("namespace"), meta.get("name"), e)
        return functions, await self._secrets(functions)

    async def _secrets(self, functions: list[Function]) -> Secrets:
        wanted = {
            (fn.metadata.namespace or "default", t.queue.url_from.name)
            for fn in functions
            for t in fn.spec.triggers
            if t.type is TriggerType.QUEUE and t.queue is not None
        }
        out: Secrets = {}
        for namespace, name in sorted(wanted):
            try:
                secret = await self._core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
            except ApiException as e:
                if e.status not in (403, 404):
                    raise
                log.error("Secret %s/%s cannot be read (%s): its queue triggers wait", namespace, name, e.status)
                continue
            for key, value in (secret.data or {}).items():
                try:
                    out[(namespace, name, key)] = base64.b64decode(value, validate=True).decode().strip()
                except (binascii.Error, UnicodeDecodeError):
                    log.error("Secret %s/%s key %s is not text", namespace, name, key)
        return out


def lookup(secrets: Secrets) -> Callable[[str, SecretKeyRef], str | None]:
    """The runner's secret lookup over one load's Secrets."""

    def get(namespace: str, ref: SecretKeyRef) -> str | None:
        return secrets.get((namespace, ref.name, ref.key))

    return get
