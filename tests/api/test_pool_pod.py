"""The pool pod from the ONE pod builder: the agent waiting for a claim the gateway signs for its id."""

from __future__ import annotations

from typing import Any

import pytest

from voltgrid.api import podspec
from voltgrid.api.pool import LABEL_SANDBOX_ID, LABEL_TEMPLATE, LABEL_TEMPLATE_HASH
from voltgrid.api.sandboxtemplate import SandboxTemplate
from voltgrid.backends.kubernetes import INSTANCE_SELECTOR
from voltgrid.errors import SpecError


def template(**spec: Any) -> SandboxTemplate:
    return SandboxTemplate.model_validate(
        {
            "metadata": {"name": "py", "namespace": "team", "uid": "u-1"},
            "spec": {"image": "img", **spec},
        }
    )


def build(t: SandboxTemplate, runtime: str | None = "gvisor") -> dict[str, Any]:
    return podspec.build_pool_pod(
        t, suffix="x1y2", template_hash="abc123", runtime_class_name=runtime, sandbox_id="sb-1", claim_key="pub"
    )


def test_pool_pod_is_labelled_owned_and_isolated() -> None:
    pod = build(template(resources={"cpu": "1", "memory": "1Gi"}))
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "py-x1y2" and meta["namespace"] == "team"
    assert meta["labels"] == {
        "voltgrid.dev/managed": "true",
        "voltgrid.dev/role": "pool",
        LABEL_TEMPLATE: "py",
        LABEL_TEMPLATE_HASH: "abc123",
        LABEL_SANDBOX_ID: "sb-1",
    }
    assert meta["ownerReferences"][0]["kind"] == "SandboxTemplate" and meta["ownerReferences"][0]["uid"] == "u-1"
    assert spec["runtimeClassName"] == "gvisor" and spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    [container] = spec["containers"]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 49999}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_pod_gets_its_id_and_the_public_claim_key_and_no_secret() -> None:
    env = build(
        template(
            env=[
                {"name": "VOLTGRID_SANDBOX_ID", "value": "mine"},
                {"name": "VOLTGRID_SANDBOX_PORT", "value": "1"},
                {"name": "A", "value": "b"},
            ]
        )
    )
    entries = env["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in entries}
    assert by_name["VOLTGRID_SANDBOX_ID"]["value"] == "sb-1"  # a template's env cannot pick the id
    assert by_name["VOLTGRID_SANDBOX_CLAIM_KEY"]["value"] == "pub"
    assert not [e for e in entries if "valueFrom" in e or "TOKEN" in e["name"]]
    assert by_name["VOLTGRID_SANDBOX_PORT"]["value"] == "49999"  # the agent's port is the template's, not env's
    assert by_name["A"]["value"] == "b" and [e["name"] for e in entries].count("VOLTGRID_SANDBOX_PORT") == 1


@pytest.mark.parametrize(("runtime", "has_class"), [("kata-fc", True), (None, False)])
def test_pool_pod_runtime_class(runtime: str | None, has_class: bool) -> None:
    assert ("runtimeClassName" in build(template(), runtime)["spec"]) is has_class


def test_pool_pod_needs_an_owner_identity() -> None:
    t = SandboxTemplate.model_validate({"metadata": {"name": "py"}, "spec": {"image": "img"}})
    with pytest.raises(SpecError, match="uid"):
        build(t)


def test_the_gateway_never_takes_a_pool_or_sandbox_pod_for_an_instance() -> None:
    assert INSTANCE_SELECTOR.endswith("voltgrid.dev/role in (instance,warm)")
