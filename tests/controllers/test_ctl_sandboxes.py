"""Sandbox controller against kmock; expiry and reaping through the ONE scheduler, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest
from ctlfakes import (
    EPOCH,
    EVENTS,
    FUNCTIONS,
    NETPOLS,
    NS,
    PODS,
    SANDBOXES,
    add_node,
    add_runtime_class,
    function,
    names,
    sandbox,
    stored,
)

from voltgrid.controllers.core import Controllers

GV = {"voltgrid.dev/gvisor": "true"}


def status(api: kmock.KubernetesEmulator, name: str = "sbx") -> dict[str, Any]:
    return dict(stored(api, SANDBOXES, name).get("status") or {})


async def start(api: kmock.KubernetesEmulator, ctl: Controllers, name: str = "sbx", **spec: Any) -> None:
    api.objects[SANDBOXES, NS, name] = sandbox(name, **spec)
    await ctl.resync()
    await ctl.sandboxes.on_event(stored(api, SANDBOXES, name), None)


async def running(ctl: Controllers, api: kmock.KubernetesEmulator, name: str = "sbx") -> None:
    """The kubelet's part: the pod got an IP and became Ready (delivered as a watch event)."""
    pod = stored(api, PODS, f"{name}-sbx")
    pod["status"] = {
        "phase": "Running",
        "podIP": "10.0.0.7",
        "startTime": EPOCH.isoformat(),
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    api.objects[PODS, NS, f"{name}-sbx"].patch({"status": pod["status"]})
    await ctl.on_pod(pod, "MODIFIED")


async def test_default_policy_without_sandbox_runtime_is_not_started(
    api: kmock.KubernetesEmulator, ctl: Controllers
) -> None:
    add_node(api)
    await start(api, ctl)
    st = status(api)
    assert st["phase"] == "NotStarted" and st["sandboxed"] is False
    assert st["conditions"][0]["reason"] == "NoSandboxRuntime"
    assert names(api, PODS) == [] and names(api, NETPOLS) == []
    events = [e.data for e in api[kmock.resource(EVENTS)][kmock.method.POST]]
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "NoSandboxRuntime")]
    # gVisor gets installed: the waiting Sandbox starts without any new event of its own.
    add_node(api, "node-2", **GV)
    await ctl.on_node("node-2", GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    await ctl.on_runtime_class("gvisor", stored(api, "node.k8s.io/v1/runtimeclasses", "gvisor", None))
    assert status(api)["runtimeClassName"] == "gvisor" and status(api)["sandboxed"] is True
    assert names(api, PODS) == ["sbx-sbx"]


async def test_runs_under_gvisor_with_egress_policy_and_endpoint(
    api: kmock.KubernetesEmulator, ctl: Controllers
) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    await start(api, ctl, network={"allowDns": True, "egress": [{"cidr": "1.1.1.1/32", "ports": [443]}]})
    pod = stored(api, PODS, "sbx-sbx")
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Sandbox"
    policy = stored(api, NETPOLS, "sbx-egress")
    assert policy["spec"]["policyTypes"] == ["Egress"] and len(policy["spec"]["egress"]) == 2
    # The policy is created before the pod: the pod never runs unconfined.
    posts = [r.url.path for r in api[kmock.method.POST] if "events" not in r.url.path]
    assert posts.index(f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies") < posts.index(
        f"/api/v1/namespaces/{NS}/pods"
    )
    assert status(api)["phase"] == "Pending"
    await running(ctl, api)
    st = status(api)
    assert (st["phase"], st["endpoint"], st["sandboxed"]) == ("Running", "10.0.0.7:8888", True)


async def test_unsandboxed_opt_in_runs_on_runc_and_says_so(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    await start(api, ctl, isolation={"allowUnsandboxed": True})
    assert "runtimeClassName" not in stored(api, PODS, "sbx-sbx")["spec"]
    st = status(api)
    assert st["sandboxed"] is False and st.get("runtimeClassName") is None
    events = [e.data for e in api[kmock.resource(EVENTS)][kmock.method.POST]]
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "Unsandboxed")]


async def test_function_ref_takes_the_functions_image(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    api.objects[FUNCTIONS, NS, "echo"] = function(port=7000)
    body = sandbox("sbx", isolation={"allowUnsandboxed": True}, functionRef="echo")
    del body["spec"]["image"], body["spec"]["port"]
    api.objects[SANDBOXES, NS, "sbx"] = body
    await ctl.sandboxes.on_event(stored(api, SANDBOXES, "sbx"), None)
    container = stored(api, PODS, "sbx-sbx")["spec"]["containers"][0]
    assert (container["image"], container["ports"][0]["containerPort"]) == ("echo:1", 7000)


@pytest.mark.looptime
async def test_ttl_expires_then_object_is_deleted(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    scheduler = asyncio.create_task(ctl.run_scheduler())
    try:
        await start(api, ctl, ttl="10m", deleteAfterExpiry=True, isolation={"allowUnsandboxed": True})
        await running(ctl, api)
        assert ctl.ctx.scheduler.due_at(("sandbox", NS, "sbx")) is not None
        await asyncio.sleep(590)
        assert status(api)["phase"] == "Running"
        await asyncio.sleep(20)
        assert status(api)["phase"] == "Expired"
        assert names(api, PODS) == [] and names(api, NETPOLS) == []
        await asyncio.sleep(35)  # sandbox_delete_grace = 30 s
        assert names(api, SANDBOXES) == []
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)


@pytest.mark.looptime
async def test_idle_instance_is_released_by_the_safety_net(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    scheduler = asyncio.create_task(ctl.run_scheduler())
    try:
        await asyncio.sleep(1)
        now = ctl.ctx.clock().isoformat()
        labels = {
            "voltgrid.dev/managed": "true",
            "voltgrid.dev/function": "echo",
            "voltgrid.dev/session": "s1",
            "voltgrid.dev/role": "instance",
        }
        pod = {
            "metadata": {
                "name": "echo-s1",
                "namespace": NS,
                "labels": labels,
                "creationTimestamp": now,
                "annotations": {"voltgrid.dev/idle-timeout": "5m"},
            }
        }
        api.objects[PODS, NS, "echo-s1"] = pod
        await ctl.on_pod(pod, "ADDED")
        await asyncio.sleep(300)
        # The gateway checkpoints activity: the deadline moves.
        pod["metadata"]["annotations"]["voltgrid.dev/last-active"] = ctl.ctx.clock().isoformat()
        await ctl.on_pod(pod, "MODIFIED")
        await asyncio.sleep(300)
        assert names(api, PODS) == ["echo-s1"]
        await asyncio.sleep(61)  # idle 5 m + reap_grace 60 s after the checkpoint
        assert names(api, PODS) == []
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
