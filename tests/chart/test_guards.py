"""Every `fail` guard of templates/validate.yaml, and the schema, refuse bad values with a clear message."""

from __future__ import annotations

from typing import Any

import pytest
from chart_render import run_template

GUARDS: list[tuple[str, dict[str, Any], list[str], str]] = [
    ("operator-replicas-0", {"operator": {"replicas": 0}}, [], "operator.replicas must be at least 1"),
    ("gateway-replicas-negative", {"gateway": {"replicas": -1}}, [], "gateway.replicas must be at least 1"),
    ("webhook-replicas-0", {"webhook": {"replicas": 0}}, [], "webhook.replicas must be at least 1"),
    (
        "peering-without-name",
        {"operator": {"replicas": 2, "peering": {"name": ""}}},
        [],
        "operator.replicas > 1 needs operator.peering.name",
    ),
    (
        "peering-with-namespace-pattern",
        {"operator": {"replicas": 2, "namespaces": ["prod", "team-*"]}},
        [],
        'operator.namespaces: "team-*" is a pattern, and operator.replicas > 1 needs a KopfPeering',
    ),
    ("ingress-without-host", {"gateway": {"ingress": {"enabled": True}}}, [], "gateway.ingress.enabled needs"),
    (
        "ingress-tls-without-ingress",
        {"gateway": {"ingress": {"tls": {"enabled": True, "secretName": "t"}}}},
        [],
        "gateway.ingress.tls.enabled needs gateway.ingress.enabled",
    ),
    (
        "ingress-tls-without-secret",
        {"gateway": {"ingress": {"enabled": True, "host": "h", "tls": {"enabled": True}}}},
        [],
        "gateway.ingress.tls.enabled needs gateway.ingress.tls.secretName",
    ),
    (
        "cert-manager-not-installed",
        {"webhook": {"tls": {"mode": "certManager"}}},
        [],
        "webhook.tls.mode=certManager needs cert-manager",
    ),
    (
        "issuer-without-cert-manager-mode",
        {"webhook": {"tls": {"certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}}},
        [],
        "webhook.tls.certManager.issuerRef is set but webhook.tls.mode is not certManager",
    ),
    ("janitor-without-storage", {"storage": {"enabled": False}}, [], "janitor.enabled needs storage.enabled"),
    (
        "session-storage-unguarded",
        {"webhook": {"enabled": False}},
        [],
        "storage.enabled needs webhook.enabled: without the webhooks any pod in a Voltgrid namespace could mount",
    ),
    ("gpu-slicer-without-profile", {"gpuSlicer": {"enabled": True}}, [], "gpuSlicer.enabled needs at least one"),
    (
        "service-monitor-without-prometheus-operator",
        {"serviceMonitor": {"enabled": True}},
        [],
        "serviceMonitor.enabled needs the Prometheus Operator",
    ),
    (
        "unknown-runtime-class",
        {"runtimeClasses": {"enabled": True, "names": ["kata-nope"]}},
        [],
        'runtimeClasses.names: "kata-nope" is not one of the shipped RuntimeClasses',
    ),
]

SCHEMA: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-top-level-key", {"replicaCount": 2}, "replicaCount"),
    ("unknown-nested-key", {"gateway": {"replica": 2}}, "replica"),
    ("bad-tls-mode", {"webhook": {"tls": {"mode": "letsencrypt"}}}, "webhook.tls.mode"),
    ("bad-profile", {"gpuSlicer": {"profiles": ["third"]}}, "gpuSlicer.profiles"),
    ("replicas-not-integer", {"operator": {"replicas": "two"}}, "operator.replicas"),
    ("port-out-of-range", {"gateway": {"port": 70000}}, "gateway.port"),
    ("bad-pull-policy", {"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ("bad-log-level", {"logLevel": "verbose"}, "logLevel"),
]


@pytest.mark.parametrize(("case", "values", "apis", "message"), GUARDS, ids=[g[0] for g in GUARDS])
def test_fail_guard(helm: str, case: str, values: dict[str, Any], apis: list[str], message: str) -> None:
    out = run_template(helm, values, apis)
    assert out.returncode != 0, f"{case} rendered"
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize(("case", "values", "names"), SCHEMA, ids=[s[0] for s in SCHEMA])
def test_schema_rejects(helm: str, case: str, values: dict[str, Any], names: str) -> None:
    out = run_template(helm, values)
    assert out.returncode != 0, f"{case} rendered"
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert names.rsplit(".", maxsplit=1)[-1] in out.stderr, out.stderr
