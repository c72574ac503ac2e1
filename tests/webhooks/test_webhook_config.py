"""The webhook configurations: schema-valid, scoped as documented, caBundle patch idempotent."""

from __future__ import annotations

import base64
from typing import Any

import jsonpatch
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from voltgrid.webhooks import config
from voltgrid.webhooks.contract import WEBHOOK_TIMEOUT_SECONDS

SERVICE = config.WebhookSettings(
    operator_namespace="voltgrid-system",
    endpoint=config.ServiceEndpoint(name="voltgrid-webhook", namespace="voltgrid-system"),
    ca_bundle=b"-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
)
URL = config.WebhookSettings(
    operator_namespace="voltgrid-system", endpoint=config.UrlEndpoint("https://127.0.0.1:9443/")
)
BUILDERS = [config.mutating_configuration, config.validating_configuration]


@pytest.mark.parametrize("settings", [SERVICE, URL], ids=["service", "url"])
@pytest.mark.parametrize("build", BUILDERS, ids=["mutating", "validating"])
def test_schema_valid_and_common_policy(settings: config.WebhookSettings, build: Any) -> None:
    obj = build(settings)
    kubernetes_validate.validate(obj, "1.31", strict=True)
    (webhook,) = obj["webhooks"]
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["timeoutSeconds"] == WEBHOOK_TIMEOUT_SECONDS == 5
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "voltgrid.dev/enabled", "operator": "In", "values": ["true"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["voltgrid-system"]},
    ]


def test_mutating_selects_managed_pods_on_create() -> None:
    (webhook,) = config.mutating_configuration(SERVICE)["webhooks"]
    assert webhook["objectSelector"] == {"matchLabels": {"voltgrid.dev/managed": "true"}}
    assert webhook["rules"][0]["operations"] == ["CREATE"]
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["clientConfig"]["service"] == {
        "name": "voltgrid-webhook", "namespace": "voltgrid-system", "path": "/mutate", "port": 443,
    }  # fmt: skip
    assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == SERVICE.ca_bundle


def test_validating_sees_every_pod_and_ephemeral_containers() -> None:
    (webhook,) = config.validating_configuration(URL)["webhooks"]
    assert webhook["objectSelector"] == {}
    assert [(r["operations"], r["resources"]) for r in webhook["rules"]] == [
        (["CREATE", "UPDATE"], ["pods"]),
        (["UPDATE"], ["pods/ephemeralcontainers"]),
        (["CONNECT"], ["pods/exec", "pods/attach", "pods/portforward"]),
        (["CREATE", "UPDATE"], ["persistentvolumeclaims"]),
    ]
    assert webhook["clientConfig"] == {"url": "https://127.0.0.1:9443/validate"}


def test_cert_manager_annotation() -> None:
    settings = config.WebhookSettings(
        operator_namespace="vg", endpoint=config.ServiceEndpoint("wh", "vg"), cert_manager_certificate="vg/wh-cert"
    )
    for build in BUILDERS:
        obj = build(settings)
        assert obj["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "vg/wh-cert"}
        assert "caBundle" not in obj["webhooks"][0]["clientConfig"]


@pytest.mark.parametrize("build", BUILDERS, ids=["mutating", "validating"])
def test_ca_bundle_patch(build: Any) -> None:
    obj = build(URL)
    patch = config.ca_bundle_patch(obj, b"CA1")
    assert [op["op"] for op in patch] == ["add"]
    patched = jsonpatch.apply_patch(obj, patch)
    assert base64.b64decode(patched["webhooks"][0]["clientConfig"]["caBundle"]) == b"CA1"
    assert config.ca_bundle_patch(patched, b"CA1") == []
    assert [op["op"] for op in config.ca_bundle_patch(patched, b"CA2")] == ["replace"]
