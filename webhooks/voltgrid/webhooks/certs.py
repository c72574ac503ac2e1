"""Keeping the operator-generated CA alive: the Secret, the caBundle of both configurations, the files.

Why the webhook process does this itself (``voltgrid webhook --manage-certs``) rather than a
controller: the certificate is the webhook's own; a controller in ``voltgrid.controllers`` may not import
``voltgrid.webhooks`` (independent layers); and a webhook that bootstraps its certificate needs no other
component to be up before the apiserver can call it. With cert-manager (the chart option) none of
this runs: cert-manager writes the Secret and its CA injector fills ``caBundle``.

One round of :func:`reconcile` (every ``CERT_CHECK_INTERVAL``):

1. read the Secret and decide with :func:`voltgrid.webhooks.tls.plan` what it should hold;
2. write it if that changed — compare-and-swap on ``resourceVersion``, so among several webhook
   replicas exactly one generation wins and the losers adopt it on the retry;
3. patch the bundle into both configurations (a no-op when they already carry it — which also
   repairs a configuration that the chart or a GitOps sync re-created without ``caBundle``);
4. only then write the serving certificate and key files, which reloads them
   (:mod:`voltgrid.webhooks.server`): the apiserver trusts the new CA before it sees a cert from it.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from kubernetes_asyncio import client

from voltgrid.errors import VoltgridError
from voltgrid.webhooks import tls
from voltgrid.webhooks.config import ca_bundle_patch
from voltgrid.webhooks.review import JsonPatchOp

log = logging.getLogger(__name__)

CERT_CHECK_INTERVAL: Final = timedelta(hours=1)
#: How many times one round re-reads the Secret after losing a write race to another replica.
CONFLICT_RETRIES: Final = 3


class CertConflictError(VoltgridError):
    """Another writer changed the webhook's TLS Secret between our read and our write."""


@dataclass(frozen=True)
class StoredSecret:
    data: dict[str, bytes]
    resource_version: str


class CertStore(Protocol):
    """Where the certificate state lives and where the caBundle goes (Kubernetes, or a fake in tests)."""

    async def read_secret(self) -> StoredSecret | None: ...

    async def write_secret(self, data: Mapping[str, bytes], resource_version: str | None) -> None:
        """Create (``resource_version`` None) or replace; CertConflictError when someone else won."""

    async def read_configuration(self, kind: str, name: str) -> dict[str, Any] | None: ...

    async def patch_configuration(self, kind: str, name: str, patch: list[JsonPatchOp]) -> None: ...


@dataclass(frozen=True)
class CertSettings:
    """Where the CA lives and what it serves.

    ``service``/``namespace`` name the webhook Service (its certificate covers
    ``<service>.<namespace>.svc``); ``extra_names`` adds DNS names or IPs (``127.0.0.1`` for a
    webhook on the host); ``configurations`` are the Mutating/Validating configuration names.
    """

    namespace: str
    service: str = "voltgrid-webhook"
    secret: str = "voltgrid-webhook-tls"
    mutating_configuration: str = "voltgrid-session-storage"
    validating_configuration: str = "voltgrid-session-isolation"
    extra_names: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return tls.service_names(self.service, self.namespace, self.extra_names)


def write_files(state: tls.CertState, cert_path: Path, key_path: Path) -> None:
    """Write the serving key and certificate atomically (rename), key first; unchanged files stay."""
    for target, content in ((key_path, state.serving.key_pem), (cert_path, state.serving.cert_pem)):
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and target.read_bytes() == content:
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        tmp.replace(target)


async def patch_bundles(store: CertStore, settings: CertSettings, bundle: bytes) -> None:
    """Put ``bundle`` into both configurations (those that exist); nothing when they carry it."""
    for kind, name in (
        ("MutatingWebhookConfiguration", settings.mutating_configuration),
        ("ValidatingWebhookConfiguration", settings.validating_configuration),
    ):
        configuration = await store.read_configuration(kind, name)
        if configuration is None:
            log.warning("%s %s does not exist (yet); its caBundle is set on a later round", kind, name)
            continue
        patch = ca_bundle_patch(configuration, bundle)
        if patch:
            await store.patch_configuration(kind, name, patch)
            log.info("caBundle of %s %s updated", kind, name)


async def reconcile(
    store: CertStore, settings: CertSettings, now: datetime, files: tuple[Path, Path] | None = None
) -> tls.CertState:
    """One round: Secret, then configurations, then files; returns the state now in force."""
    for _ in range(CONFLICT_RETRIES):
        stored = await store.read_secret()
        current = tls.CertState.from_secret_data(stored.data) if stored else None
        desired = tls.plan(current, settings.names, now)
        if desired is not current:
            try:
                await store.write_secret(desired.secret_data(), stored.resource_version if stored else None)
            except CertConflictError:
                log.info("TLS Secret %s changed under us; re-reading", settings.secret)
                continue
            log.info("TLS Secret %s written (CA %s)", settings.secret, desired.ca.cert.subject.rfc4514_string())
        await patch_bundles(store, settings, desired.bundle)
        if files is not None:
            write_files(desired, *files)
        return desired
    raise CertConflictError(f"TLS Secret {settings.secret} kept changing during {CONFLICT_RETRIES} attempts")


class KubernetesCertStore:
    """:class:`CertStore` on the real apiserver through kubernetes_asyncio."""

    def __init__(self, api: Any, settings: CertSettings) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._admission = client.AdmissionregistrationV1Api(api)
        self._settings = settings

    async def read_secret(self) -> StoredSecret | None:
        try:
            secret = await self._core.read_namespaced_secret(self._settings.secret, self._settings.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
        return StoredSecret(data=data, resource_version=secret.metadata.resource_version)

    async def write_secret(self, data: Mapping[str, bytes], resource_version: str | None) -> None:
        metadata: dict[str, Any] = {
            "name": self._settings.secret,
            "namespace": self._settings.namespace,
            "labels": {"app.kubernetes.io/part-of": "voltgrid", "app.kubernetes.io/component": "webhook"},
        }
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        body: Any = {  # a dict is serialised as is; the stubs only know V1Secret
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": metadata,
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
        }
        try:
            if resource_version is None:
                await self._core.create_namespaced_secret(self._settings.namespace, body)
            else:
                await self._core.replace_namespaced_secret(self._settings.secret, self._settings.namespace, body)
        except client.ApiException as exc:
            if exc.status == 409:
                raise CertConflictError(str(exc.reason)) from exc
            raise

    async def read_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        read = (
            self._admission.read_mutating_webhook_configuration
            if kind == "MutatingWebhookConfiguration"
            else self._admission.read_validating_webhook_configuration
        )
        try:
            obj = await read(name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self._api.sanitize_for_serialization(obj)
        return result

    async def patch_configuration(self, kind: str, name: str, patch: list[JsonPatchOp]) -> None:
        if kind == "MutatingWebhookConfiguration":
            await self._admission.patch_mutating_webhook_configuration(name, list(patch))
        else:
            await self._admission.patch_validating_webhook_configuration(name, list(patch))
