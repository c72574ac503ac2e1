"""Instance backends: the Kubernetes backend's pods come from the operator's builder (pure,
table-style), and the local backend's shared state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gwhelpers import function
from kubernetes_asyncio.client.exceptions import ApiException

from voltgrid.api import constants, podspec
from voltgrid.api.function import FunctionStatus
from voltgrid.backends.base import ControlPlaneUnavailableError, InstanceBackend
from voltgrid.backends.kubernetes import control_plane, instance_pod, rfc3339
from voltgrid.backends.local import LocalProcessBackend
from voltgrid.errors import RuntimeUnavailableError
from voltgrid.gateway.catalog_watch import runtime_status


@pytest.mark.parametrize(("warm", "role"), [(False, "instance"), (True, "warm")])
def test_instance_pod_is_the_operators_pod(warm: bool, role: str) -> None:
    fn = function("agent", idleTimeout="10s")
    fn.metadata.uid = "uid-1"
    fn.spec.isolation.runtime_class_name = "kata-fc"
    pod = instance_pod(fn, "s-abc", warm)
    role_enum = podspec.Role.WARM if warm else podspec.Role.INSTANCE
    assert pod == podspec.build_instance_pod(fn, "s-abc", role=role_enum, runtime_class_name="kata-fc")
    assert pod["metadata"]["labels"] == {
        constants.LABEL_MANAGED: "true",
        constants.LABEL_FUNCTION: "agent",
        constants.LABEL_SESSION: "s-abc",
        constants.LABEL_ROLE: role,
    }
    assert pod["metadata"]["name"] == "agent-s-abc"  # deterministic: a repeated create answers 409
    assert pod["metadata"]["annotations"][podspec.ANNOTATION_IDLE_TIMEOUT] == "10s"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    (container,) = pod["spec"]["containers"]
    assert {"name": "VOLTGRID_SESSION_ID", "value": "s-abc"} in container["env"]


@pytest.mark.parametrize(
    ("isolation", "status", "runtime"),
    [
        ({"runtimeClassName": "gvisor"}, None, "gvisor"),  # not reconciled yet: the explicit class
        ({}, {"runtimeClassName": "kata-fc", "instances": 3}, "kata-fc"),  # the operator's choice
        ({"allowUnsandboxed": True}, {"conditions": []}, None),  # opted in: the node's default runtime
        ({"allowUnsandboxed": True}, None, None),
    ],
)
def test_instance_pods_run_with_the_runtime_the_operator_chose(
    isolation: dict[str, Any], status: dict[str, Any] | None, runtime: str | None
) -> None:
    fn = function("agent")
    fn.metadata.uid = "uid-1"
    fn.spec.isolation = fn.spec.isolation.model_validate(isolation)
    fn.status = runtime_status(status)
    assert instance_pod(fn, "s-1", False)["spec"].get("runtimeClassName") == runtime


@pytest.mark.parametrize("status", [None, {"conditions": [{"type": "Ready", "status": "False"}]}])
def test_no_pod_without_a_sandboxed_runtime_or_an_opt_in(status: dict[str, Any] | None) -> None:
    fn = function("agent")
    fn.metadata.uid = "uid-1"
    fn.status = runtime_status(status)
    with pytest.raises(RuntimeUnavailableError):
        instance_pod(fn, "s-1", False)


def test_runtime_status_keeps_only_the_runtime_choice() -> None:
    assert runtime_status({"runtimeClassName": "gvisor", "kopf": {"x": 1}}) == FunctionStatus(
        runtime_class_name="gvisor"
    )
    assert runtime_status({}) is None


@pytest.mark.parametrize(("when", "text"), [(0.0, "1970-01-01T00:00:00Z"), (1_700_000_000.75, "2023-11-14T22:13:20Z")])
def test_last_active_is_rfc3339_utc(when: float, text: str) -> None:
    assert rfc3339(when) == text


async def test_a_second_backend_object_lists_and_deletes_instances_it_did_not_start(tmp_path: Path) -> None:
    first = LocalProcessBackend(tmp_path / "state", tmp_path / "storage")
    second = LocalProcessBackend(tmp_path / "state", tmp_path / "storage")  # another gateway process
    assert isinstance(first, InstanceBackend)
    try:
        instance = await first.create(function("echo"), "s-1")
        assert (tmp_path / "storage" / "default" / "echo" / "s-1").is_dir()
        (found,) = await second.list(function="default/echo", session="s-1")
        assert (found.id, found.url) == (instance.id, instance.url)
        assert await second.list(session="s-2") == []
        await second.delete(found)
        assert await first.list() == []
    finally:
        await first.stop_all()


@pytest.mark.parametrize(
    ("raised", "unavailable"),
    [
        (ApiException(status=503, reason="Service Unavailable"), True),
        (ApiException(status=429, reason="Too Many Requests"), True),
        (ApiException(status=504, reason="Gateway Timeout"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (ConnectionResetError("reset by peer"), True),
        (ApiException(status=403, reason="Forbidden"), False),
        (ApiException(status=422, reason="Unprocessable Entity"), False),
    ],
)
def test_apiserver_failures_that_a_retry_may_fix_are_classified(raised: Exception, unavailable: bool) -> None:
    with pytest.raises(ControlPlaneUnavailableError if unavailable else ApiException), control_plane("list pods"):
        raise raised
