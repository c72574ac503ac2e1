"""The SandboxTemplate model and CRD: pool bounds, secure defaults, the /scale subresource."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from voltgrid.api import SandboxTemplate, crdgen


def test_template_defaults_are_secure_and_the_pool_empty() -> None:
    t = SandboxTemplate.model_validate({"spec": {"image": "localhost/voltgrid/sandbox-python"}})
    assert t.spec.replicas == 0 and t.spec.agent_port == 49999
    assert t.spec.isolation.allow_unsandboxed is False
    assert t.spec.network.egress == [] and t.spec.network.allow_dns is False
    assert (t.spec.max_warming, t.spec.refill_per_minute, t.spec.ttl, t.spec.max_ttl) == (10, 120, "15m", "24h")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "image"),
        ({"image": "x", "replicas": -1}, "replicas"),
        ({"image": "x", "replicas": 10_001}, "replicas"),
        ({"image": "x", "maxWarming": 0}, "maxWarming"),
        ({"image": "x", "refillPerMinute": 0}, "refillPerMinute"),
        ({"image": "x", "ttl": "forever"}, "ttl"),
        ({"image": "x", "network": {"egress": [{"cidr": "10.0.0.0/99"}]}}, "CIDR"),
        ({"image": "x", "agentPort": 0}, "agentPort"),
        ({"image": "x", "unknown": 1}, "unknown"),
    ],
)
def test_template_rejects(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SandboxTemplate.model_validate({"spec": spec})


def _crd(kind: str) -> dict[str, Any]:
    for text in crdgen.render_all().values():
        doc: dict[str, Any] = yaml.safe_load(text)
        if doc["spec"]["names"]["kind"] == kind:
            return doc
    raise KeyError(kind)


def test_template_crd_serves_scale_for_an_hpa() -> None:
    version = _crd("SandboxTemplate")["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"replicas", "ready", "warming", "claimed", "updated", "selector", "templateHash"} <= set(status)
    rules = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert [r["rule"] for r in rules] == ["duration(self.ttl) <= duration(self.maxTtl)"]


@pytest.mark.parametrize("kind", ["Function", "Session", "Sandbox"])
def test_other_crds_have_no_scale(kind: str) -> None:
    assert "scale" not in _crd(kind)["spec"]["versions"][0]["subresources"]
