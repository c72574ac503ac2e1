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


def _storage_view(pod: dict[str, Any]) -> tuple[Any, ...]:
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    return (
        pod["metadata"]["annotations"].get("voltgrid.dev/storage-claim"),
        pod["metadata"]["annotations"].get("voltgrid.dev/storage-mount-path"),
        pod["spec"].get("volumes"),
        container.get("volumeMounts"),
        env.get("VOLTGRID_STORAGE_DIR"),
    )


STORAGE = {"claimName": "sessions", "mountPath": "/state"}
VOLUME = [{"name": "voltgrid-session", "persistentVolumeClaim": {"claimName": "sessions"}}]


@pytest.mark.parametrize(
    ("role", "session"),
    [(podspec.Role.INSTANCE, "alice-1"), (podspec.Role.WARM, "wabc"), (podspec.Role.INSTANCE, "wabc")],
    ids=["cold start", "warm pod (its pre-minted id)", "wake of a claimed warm session"],
)
def test_a_functions_storage_reaches_every_instance_pod(role: podspec.Role, session: str) -> None:
    pod = podspec.build_instance_pod(fn(storage=STORAGE), session, role=role, runtime_class_name="gvisor")
    mount = [{"name": "voltgrid-session", "mountPath": "/state", "subPath": f"{NS}/echo/{session}"}]
    assert _storage_view(pod) == ("sessions", "/state", VOLUME, mount, "/state")


def test_no_storage_no_mount() -> None:
    pod = podspec.build_instance_pod(fn(), "s1", runtime_class_name=None)
    assert _storage_view(pod) == (None, None, None, None, None)


def test_a_sandboxs_storage_is_its_sessions_directory() -> None:
    sbx = Sandbox.model_validate(
        {
            "metadata": {"name": "s", "namespace": NS, "uid": "u3"},
            "spec": {"functionRef": "echo", "sessionRef": "abc", "storage": STORAGE},
        }
    )
    pod = podspec.build_sandbox_pod(sbx, runtime_class_name="gvisor", function=fn())
    mount = [{"name": "voltgrid-session", "mountPath": "/state", "subPath": f"{NS}/echo/abc"}]
    assert _storage_view(pod) == ("sessions", "/state", VOLUME, mount, "/state")


def test_the_webhook_keeps_the_builders_mount() -> None:
    """The mutating webhook re-derives the same single volume and mount (no second volume of the claim)."""
    from voltgrid.webhooks import mutate  # noqa: PLC0415 - the webhook is a sibling layer, used only here

    pod = podspec.build_instance_pod(fn(storage=STORAGE), "s1", runtime_class_name="gvisor")
    stored = mutate.mutate(pod, NS)
    assert stored["spec"]["volumes"] == VOLUME
    assert [m["name"] for m in stored["spec"]["containers"][0]["volumeMounts"]] == ["voltgrid-session"]
