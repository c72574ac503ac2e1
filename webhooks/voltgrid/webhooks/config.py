"""Pure builders of the Mutating- and ValidatingWebhookConfiguration, and the caBundle patch.

Why these choices:

* ``namespaceSelector``: only namespaces labelled ``voltgrid.dev/enabled=true``, and never the
  operator's own namespace (``kubernetes.io/metadata.name NotIn``) — with ``failurePolicy: Fail`` a
  webhook that selected its own namespace could never be restarted while it is down.
* ``objectSelector`` ``voltgrid.dev/managed=true`` on the mutating webhook (only our pods are changed);
  none on the validating one (every pod in a Voltgrid namespace is checked: that is the isolation).
* ``failurePolicy: Fail`` with ``timeoutSeconds`` = ``WEBHOOK_TIMEOUT_SECONDS``: a pod that could not be
  checked must not start; a short timeout keeps a dead webhook from stalling the apiserver.
* Every field the apiserver would default is written out (matchPolicy, scope, port, selectors), so a
  GitOps tool sees no drift. ``caBundle`` is the one field written at runtime — by the operator's own CA
  (:mod:`voltgrid.webhooks.certs`) or by cert-manager's CA injector (annotation
  ``cert-manager.io/inject-ca-from``, the chart option) — so GitOps tools should ignore it.
* The chart points ``clientConfig.service`` at the webhook Service; a URL ``clientConfig`` is for a
  webhook running outside the cluster (the e2e tests: the process on the host, the apiserver calling
  ``https://127.0.0.1:<port>``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

from voltgrid.api import constants
from voltgrid.webhooks import contract
from voltgrid.webhooks.review import JsonPatchOp

ADMISSIONREGISTRATION: Final = "admissionregistration.k8s.io/v1"
MUTATING_WEBHOOK_NAME: Final = "session-storage.voltgrid.dev"
VALIDATING_WEBHOOK_NAME: Final = "session-isolation.voltgrid.dev"
CERT_MANAGER_INJECT_ANNOTATION: Final = "cert-manager.io/inject-ca-from"


@dataclass(frozen=True)
class ServiceEndpoint:
    """The webhook behind a Service (the chart)."""

    name: str
    namespace: str
    port: int = 443


@dataclass(frozen=True)
class UrlEndpoint:
    """The webhook at a URL the apiserver can reach (``https://host:port``, no path)."""

    base_url: str


@dataclass(frozen=True)
class WebhookSettings:
    """Inputs of both configurations.

    ``name`` prefixes the two objects (``<name>-session-storage``, ``<name>-session-isolation``);
    ``ca_bundle`` is PEM (one or more CA certificates); ``cert_manager_certificate`` (``ns/name``)
    asks cert-manager to inject its CA instead.
    """

    operator_namespace: str
    endpoint: ServiceEndpoint | UrlEndpoint
    name: str = "voltgrid"
    ca_bundle: bytes | None = None
    cert_manager_certificate: str | None = None
    timeout_seconds: int = contract.WEBHOOK_TIMEOUT_SECONDS

    @property
    def mutating_name(self) -> str:
        return f"{self.name}-session-storage"

    @property
    def validating_name(self) -> str:
        return f"{self.name}-session-isolation"


def namespace_selector(operator_namespace: str) -> dict[str, Any]:
    """Voltgrid-enabled namespaces, the operator's own excluded."""
    return {
        "matchExpressions": [
            {"key": contract.LABEL_NAMESPACE_ENABLED, "operator": "In", "values": ["true"]},
            {"key": contract.LABEL_NAMESPACE_NAME, "operator": "NotIn", "values": [operator_namespace]},
        ]
    }


def _client_config(settings: WebhookSettings, path: str) -> dict[str, Any]:
    endpoint = settings.endpoint
    config: dict[str, Any]
    if isinstance(endpoint, ServiceEndpoint):
        config = {
            "service": {"name": endpoint.name, "namespace": endpoint.namespace, "path": path, "port": endpoint.port}
        }
    else:
        config = {"url": endpoint.base_url.rstrip("/") + path}
    if settings.ca_bundle:
        config["caBundle"] = base64.b64encode(settings.ca_bundle).decode()
    return config


def _metadata(settings: WebhookSettings, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "voltgrid"}}
    if settings.cert_manager_certificate:
        meta["annotations"] = {CERT_MANAGER_INJECT_ANNOTATION: settings.cert_manager_certificate}
    return meta


def _webhook(settings: WebhookSettings, name: str, path: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": settings.timeout_seconds,
        "namespaceSelector": namespace_selector(settings.operator_namespace),
        "objectSelector": {},
        "rules": rules,
        "clientConfig": _client_config(settings, path),
    }


def _rule(operations: list[str], resources: list[str]) -> dict[str, Any]:
    return {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": operations,
        "resources": resources,
        "scope": "Namespaced",
    }


def mutating_configuration(settings: WebhookSettings) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: CREATE of managed pods in Voltgrid namespaces."""
    webhook = _webhook(settings, MUTATING_WEBHOOK_NAME, contract.MUTATE_PATH, [_rule(["CREATE"], ["pods"])])
    webhook["objectSelector"] = {"matchLabels": {constants.LABEL_MANAGED: "true"}}
    webhook["reinvocationPolicy"] = "IfNeeded"
    return {
        "apiVersion": ADMISSIONREGISTRATION,
        "kind": "MutatingWebhookConfiguration",
        "metadata": _metadata(settings, settings.mutating_name),
        "webhooks": [webhook],
    }


def validating_configuration(settings: WebhookSettings) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration: every pod and claim in Voltgrid namespaces (create, update,
    ``kubectl debug``) and every exec, attach and port-forward into a pod there."""
    rules = [
        _rule(["CREATE", "UPDATE"], ["pods"]),
        _rule(["UPDATE"], ["pods/ephemeralcontainers"]),
        # A tenant's shell in a session pod would read its files: refused unless Voltgrid asks.
        _rule(["CONNECT"], ["pods/exec", "pods/attach", "pods/portforward"]),
        # Cloning a session claim, or taking its session-storage label off.
        _rule(["CREATE", "UPDATE"], ["persistentvolumeclaims"]),
    ]
    return {
        "apiVersion": ADMISSIONREGISTRATION,
        "kind": "ValidatingWebhookConfiguration",
        "metadata": _metadata(settings, settings.validating_name),
        "webhooks": [_webhook(settings, VALIDATING_WEBHOOK_NAME, contract.VALIDATE_PATH, rules)],
    }


def ca_bundle_patch(configuration: dict[str, Any], ca_bundle: bytes) -> list[JsonPatchOp]:
    """JSONPatch setting every webhook's ``clientConfig.caBundle``; empty when all already carry it."""
    encoded = base64.b64encode(ca_bundle).decode()
    ops: list[JsonPatchOp] = []
    for i, webhook in enumerate(configuration.get("webhooks") or []):
        current = (webhook.get("clientConfig") or {}).get("caBundle")
        if current != encoded:
            op: JsonPatchOp = {
                "op": "replace" if current is not None else "add",
                "value": encoded,
                "path": f"/webhooks/{i}/clientConfig/caBundle",
            }
            ops.append(op)
    return ops
