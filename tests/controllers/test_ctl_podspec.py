"""The one pod builder: names, labels, owners, runtime class, resources."""

from __future__ import annotations

from typing import Any

import pytest
from ctlfakes import NS

from voltgrid.api import podspec
from voltgrid.api.function import Function
from voltgrid.api.sandbox import Sandbox
from voltgrid.api.session import Session
from voltgrid.errors import RuntimeUnavailableError, SpecError


def fn(status: dict[str, Any] | None = None, **spec: Any) -> Function:
    body: dict[str, Any] = {
        "metadata": {"name": "echo", "namespace": NS, "uid": "u1"},
        "spec": {"image": "echo:1", **spec},
    }
    if status is not None:
        body["status"] = status
    return Function.model_validate(body)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("echo", "abc"), "echo-abc"),
        (("f" * 40, "s" * 22), "f" * 40 + "-" + "s" * 22),
    ],
)
def test_bounded_name_short(parts: tuple[str, ...], expected: str) -> None:
    assert podspec.bounded_name(*parts) == expected


def test_bounded_name_long_is_stable_and_distinct() -> None:
    a = podspec.instance_pod_name("f" * 50, "s" * 40)
    b = podspec.instance_pod_name("f" * 50, "s" * 39 + "t")
    assert len(a) <= 63 and a == podspec.instance_pod_name("f" * 50, "s" * 40) and a != b


@pytest.mark.parametrize(
    ("role", "runtime"),
    [
        (podspec.Role.INSTANCE, "gvisor"),
        (podspec.Role.WARM, "kata-fc"),
        (podspec.Role.INSTANCE, None),
    ],
)
def test_instance_pod(role: podspec.Role, runtime: str | None) -> None:
    pod = podspec.build_instance_pod(fn(port=9000), "s1", role=role, runtime_class_name=runtime)
    meta = pod["metadata"]
    assert meta["name"] == "echo-s1"
    assert meta["labels"] == {
        "voltgrid.dev/managed": "true",
        "voltgrid.dev/function": "echo",
        "voltgrid.dev/session": "s1",
        "voltgrid.dev/role": str(role),
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Function",
            "name": "echo",
            "uid": "u1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pod["spec"].get("runtimeClassName") == runtime
    container = pod["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 9000
    assert {"name": "VOLTGRID_SESSION_ID", "value": "s1"} in container["env"]
    assert meta["annotations"][podspec.ANNOTATION_IDLE_TIMEOUT] == "15m"


def test_keep_warm_session_co_owns_its_pod() -> None:
    session = Session.model_validate(
        {"metadata": {"name": "agent", "namespace": NS, "uid": "u2"}, "spec": {"functionRef": "echo", "keepWarm": True}}
    )
    pod = podspec.build_instance_pod(fn(), "agent", runtime_class_name=None, session_owner=session)
    owners = pod["metadata"]["ownerReferences"]
    assert [(o["kind"], o["controller"]) for o in owners] == [("Function", True), ("Session", False)]
    assert pod["metadata"]["annotations"][podspec.ANNOTATION_KEEP_WARM] == "true"


@pytest.mark.parametrize(("gpu", "expected"), [(0, {}), (1, {"nvidia.com/gpu": "1"}), (2, {"nvidia.com/gpu": "2"})])
def test_whole_gpus(gpu: float, expected: dict[str, str]) -> None:
    assert podspec.gpu_resources(gpu) == expected


def test_fractional_gpu_is_a_slice_resource() -> None:
    limits = podspec.container_resources(fn(resources={"gpu": 0.25}).spec.resources)["limits"]
    assert limits["voltgrid.dev/gpu-1-4"] == "1"


@pytest.mark.parametrize(
    ("status", "isolation", "expected"),
    [
        ({"runtimeClassName": "gvisor"}, {}, "gvisor"),
        (None, {"runtimeClassName": "kata-fc"}, "kata-fc"),
        ({}, {"allowUnsandboxed": True}, None),
        ({}, {}, RuntimeUnavailableError),
        (None, {}, RuntimeUnavailableError),
    ],
)
def test_runtime_for(status: dict[str, Any] | None, isolation: dict[str, Any], expected: object) -> None:
    function = fn(status=status, isolation=isolation)
    if expected is RuntimeUnavailableError:
        with pytest.raises(RuntimeUnavailableError, match="allowUnsandboxed"):
            podspec.runtime_for(function)
    else:
        assert podspec.runtime_for(function) == expected


def test_sandbox_pod_from_function_ref() -> None:
    sbx = Sandbox.model_validate(
        {"metadata": {"name": "s", "namespace": NS, "uid": "u3"}, "spec": {"functionRef": "echo", "sessionRef": "abc"}}
    )
    pod = podspec.build_sandbox_pod(sbx, runtime_class_name="gvisor", function=fn(port=7000))
    assert pod["metadata"]["name"] == "s-sbx"
    assert pod["metadata"]["labels"]["voltgrid.dev/role"] == "sandbox"
    assert pod["metadata"]["labels"]["voltgrid.dev/session"] == "abc"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["containers"][0]["image"] == "echo:1"
    assert pod["spec"]["containers"][0]["ports"][0]["containerPort"] == 7000
    with pytest.raises(SpecError, match="not resolved"):
        podspec.build_sandbox_pod(sbx, runtime_class_name=None)
