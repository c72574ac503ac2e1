"""The generated CRDs on a real apiserver: they apply, valid objects are accepted with their
printer columns, and invalid objects are rejected with a message that names the field."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "crd-e2e"


def kubectl(cluster: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(cluster.bin_dir) / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def crds(voltgrid_crds: Any) -> Any:
    cluster = voltgrid_crds
    kubectl(cluster, "create", "namespace", NAMESPACE)
    yield cluster
    kubectl(cluster, "delete", "namespace", NAMESPACE, "--wait=false")


def apply(cluster: Any, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, "apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(doc))


def function(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"image": "localhost/voltgrid/python:3.11", **spec},
    }


def test_valid_objects_are_accepted_with_defaults_and_columns(crds: Any) -> None:
    docs = [
        function("echo"),
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Session",
            "metadata": {"name": "s1"},
            "spec": {"functionRef": "echo", "sessionId": "agent-1", "keepWarm": True},
        },
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "box"},
            "spec": {"image": "localhost/voltgrid/python:3.11", "ttl": "10m"},
        },
    ]
    for doc in docs:
        out = apply(crds, doc)
        assert out.returncode == 0, out.stderr
    got = json.loads(kubectl(crds, "get", "fn", "echo", "-n", NAMESPACE, "-o", "json").stdout)
    assert got["spec"]["sessions"] == {
        "affinity": "Header",
        "header": "X-Voltgrid-Session",
        "cookie": "voltgrid-session",
        "sessionsPerInstance": 1,
        "idleTimeout": "15m",
        "maxLifetime": "6h",
    }
    assert got["spec"]["isolation"]["policy"] == ["kata-fc", "kata-clh", "kata-qemu", "gvisor"]
    table = kubectl(crds, "get", "fn,sbx", "-n", NAMESPACE)
    assert table.returncode == 0, table.stderr
    for column in ("AFFINITY", "INSTANCES", "SESSIONS", "URL", "RUNTIME", "SANDBOXED", "EXPIRES"):
        assert column in table.stdout
    category = kubectl(crds, "get", "voltgrid", "-n", NAMESPACE, "-o", "name")
    assert sorted(category.stdout.split()) == [
        "function.voltgrid.dev/echo",
        "sandbox.voltgrid.dev/box",
        "session.voltgrid.dev/s1",
    ]


INVALID = [
    ("bad-duration", function("a", sessions={"idleTimeout": "forever"}), "spec.sessions.idleTimeout"),
    ("unknown-affinity", function("b", sessions={"affinity": "Sticky"}), "spec.sessions.affinity"),
    ("negative-scaling", function("c", scaling={"minInstances": -1}), "spec.scaling.minInstances"),
    (
        "min-over-max",
        function("d", scaling={"minInstances": 5, "maxInstances": 2}),
        "minInstances must not exceed maxInstances",
    ),
    (
        "idle-over-lifetime",
        function("e", sessions={"idleTimeout": "2h", "maxLifetime": "1h"}),
        "spec.sessions.idleTimeout",
    ),
    ("lifetime-over-24h", function("f", sessions={"maxLifetime": "25h"}), "spec.sessions.maxLifetime"),
    ("bad-gpu-fraction", function("g", resources={"gpu": 0.3}), "spec.resources.gpu"),
    ("port-range", function("h", port=70000), "spec.port"),
    ("unknown-field", function("i", replicas=3), "replicas"),
    (
        "bad-session-id",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Session",
            "metadata": {"name": "bad-id"},
            "spec": {"functionRef": "echo", "sessionId": "Not_A_Label"},
        },
        "spec.sessionId",
    ),
    (
        "sandbox-image-and-ref",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "both-set"},
            "spec": {"image": "x", "functionRef": "echo"},
        },
        "exactly one of image, functionRef and templateRef",
    ),
    (
        "sandbox-template-without-token",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "no-token"},
            "spec": {"templateRef": "py"},
        },
        "templateRef and tokenSha256 go together",
    ),
    (
        "sandbox-template-and-port",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "tpl-port"},
            "spec": {"templateRef": "py", "tokenSha256": "a" * 64, "port": 8080},
        },
        "with templateRef the template shapes the pod",
    ),
    (
        "sandbox-template-and-network",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "tpl-net"},
            "spec": {"templateRef": "py", "tokenSha256": "a" * 64, "network": {"allowDns": True}},
        },
        "network must be unset",
    ),
    (
        "sandbox-template-bad-digest",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "tpl-digest"},
            "spec": {"templateRef": "py", "tokenSha256": "A" * 64},
        },
        "spec.tokenSha256",
    ),
    (
        "sandbox-bad-cidr",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "bad-cidr"},
            "spec": {"image": "x", "network": {"egress": [{"cidr": "everywhere"}]}},
        },
        "spec.network.egress[0].cidr",
    ),
    (
        "sandbox-cidr-prefix-out-of-range",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "cidr-99"},
            "spec": {"image": "x", "network": {"egress": [{"cidr": "10.0.0.0/99"}]}},
        },
        "must be an IPv4 or IPv6 CIDR",
    ),
    (
        "sandboxtemplate-ttl-over-max",
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "SandboxTemplate",
            "metadata": {"name": "ttl-over-max"},
            "spec": {"image": "x", "ttl": "2h", "maxTtl": "1h"},
        },
        "ttl must not exceed maxTtl",
    ),
]


@pytest.mark.parametrize(("case", "doc", "names"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_objects_are_rejected_naming_the_field(crds: Any, case: str, doc: dict[str, Any], names: str) -> None:
    out = apply(crds, doc)
    assert out.returncode != 0, f"{case} was accepted"
    assert names in out.stderr, out.stderr


def test_session_id_is_immutable(crds: Any) -> None:
    doc = {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Session",
        "metadata": {"name": "immut"},
        "spec": {"functionRef": "echo", "sessionId": "first"},
    }
    assert apply(crds, doc).returncode == 0
    doc["spec"]["sessionId"] = "second"
    out = apply(crds, doc)
    assert out.returncode != 0 and "sessionId is immutable" in out.stderr, out.stderr


def test_sandboxtemplate_scales_through_its_scale_subresource(crds: Any) -> None:
    doc = {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "SandboxTemplate",
        "metadata": {"name": "pool"},
        "spec": {"image": "localhost/voltgrid/sandbox-python"},
    }
    assert apply(crds, doc).returncode == 0
    out = kubectl(crds, "scale", "-n", NAMESPACE, "sandboxtemplate/pool", "--replicas=7")
    assert out.returncode == 0, out.stderr
    got = json.loads(kubectl(crds, "get", "-n", NAMESPACE, "sandboxtemplate/pool", "-o", "json").stdout)
    assert got["spec"]["replicas"] == 7 and got["spec"]["maxWarming"] == 10
    path = f"/apis/voltgrid.dev/v1alpha1/namespaces/{NAMESPACE}/sandboxtemplates/pool/scale"
    scale = kubectl(crds, "get", "--raw", path)
    assert json.loads(scale.stdout)["spec"]["replicas"] == 7
