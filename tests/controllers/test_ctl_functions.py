"""Function controller against an HTTP-level fake apiserver (kmock)."""

from __future__ import annotations

import json

import kmock
import kopf
from ctlfakes import (
    EVENTS,
    FUNCTIONS,
    NS,
    PODS,
    add_node,
    add_runtime_class,
    eventually,
    function,
    names,
    stored,
)

from bgtask import background
from voltgrid.controllers.core import Controllers
from voltgrid.controllers.main import build_controllers

GV = {"voltgrid.dev/gvisor": "true"}


def ready(api: kmock.KubernetesEmulator, name: str = "echo") -> dict[str, str]:
    status = stored(api, FUNCTIONS, name)["status"]
    cond = next(c for c in status["conditions"] if c["type"] == "Ready")
    return {"status": cond["status"], "reason": cond["reason"], "runtime": status.get("runtimeClassName")}


async def test_function_without_pool_is_ready_with_zero_pods_and_forgotten(
    api: kmock.KubernetesEmulator, ctl: Controllers
) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    api.objects[FUNCTIONS, NS, "echo"] = function()
    await ctl.resync()
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    assert ready(api) == {"status": "True", "reason": "Ready", "runtime": "gvisor"}
    status = stored(api, FUNCTIONS, "echo")["status"]
    assert status["url"] == "http://voltgrid-gateway.voltgrid-system.svc/fn/team-a/echo/"
    assert status["observedGeneration"] == 1
    assert names(api, PODS) == []
    assert ctl.functions.active == {}  # O(1): nothing kept for an idle Function
    patches = len(api[kmock.method.PATCH])
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)  # a re-list after a restart
    assert len(api[kmock.method.PATCH]) == patches  # writes nothing new


async def test_warm_pool_is_created_once_with_owner_references(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    api.objects[FUNCTIONS, NS, "echo"] = function(scaling={"warmPool": 2})
    await ctl.resync()
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)  # no duplicates
    pods = names(api, PODS)
    assert len(pods) == 2
    for name in pods:
        pod = stored(api, PODS, name)
        assert pod["metadata"]["labels"]["voltgrid.dev/role"] == "warm"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-echo"
        assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert stored(api, FUNCTIONS, "echo")["status"]["warmInstances"] == 2
    assert any(e.data.get("reason") == "WarmPool" for e in api[kmock.resource(EVENTS)][kmock.method.POST])


async def test_restart_adopts_existing_pods_without_duplicates(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    api.objects[FUNCTIONS, NS, "echo"] = function(scaling={"warmPool": 2})
    await ctl.resync()
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    before = names(api, PODS)
    # A fresh operator process: new memory, same cluster.
    restarted = build_controllers(ctl.ctx.settings, clock=ctl.ctx.clock)
    restarted.ctx.client.login(kopf.ConnectionInfo(server=str(api.url)))
    try:
        await restarted.resync()
        await restarted.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
        await restarted.sweep_once()
    finally:
        await restarted.ctx.client.close()
    assert names(api, PODS) == before


async def test_no_sandbox_runtime_then_one_appears(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    api.objects[FUNCTIONS, NS, "echo"] = function(scaling={"warmPool": 1})
    await ctl.resync()
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    assert ready(api) == {"status": "False", "reason": "NoSandboxRuntime", "runtime": None}
    assert names(api, PODS) == []
    warnings = [e.data for e in api[kmock.resource(EVENTS)][kmock.method.POST]]
    assert any(e["reason"] == "NoSandboxRuntime" and e["type"] == "Warning" for e in warnings)
    # kata-deploy labels the node and installs the RuntimeClass: the Function becomes Ready.
    add_node(api, **{"katacontainers.io/kata-runtime": "true"})
    await ctl.on_node("node-1", {"katacontainers.io/kata-runtime": "true"})
    add_runtime_class(api, "kata-fc", "kata-fc", **{"katacontainers.io/kata-runtime": "true"})
    async with background(ctl.run_functions()):
        await ctl.on_runtime_class("kata-fc", stored(api, "node.k8s.io/v1/runtimeclasses", "kata-fc", None))
        await eventually(lambda: ready(api)["status"] == "True")
    assert ready(api) == {"status": "True", "reason": "Ready", "runtime": "kata-fc"}
    assert len(names(api, PODS)) == 1


async def test_unsandboxed_opt_in_is_ready_and_says_so(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    api.objects[FUNCTIONS, NS, "echo"] = function(isolation={"allowUnsandboxed": True})
    await ctl.resync()
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    assert ready(api) == {"status": "True", "reason": "Unsandboxed", "runtime": None}


async def test_invalid_spec_gets_a_condition_not_a_crash(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    api.objects[FUNCTIONS, NS, "bad"] = function("bad", scaling={"minInstances": 5, "maxInstances": 2})
    await ctl.functions.on_event(stored(api, FUNCTIONS, "bad"), None)
    assert ready(api, "bad")["reason"] == "InvalidSpec"


async def test_pod_changes_refresh_counts_in_one_sweep(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    api.objects[FUNCTIONS, NS, "echo"] = function()
    await ctl.resync()
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    # The gateway created two session instances (cold starts); the operator hears of them by watch.
    for sid in ("s1", "s2"):
        await ctl.on_pod(
            {
                "metadata": {
                    "name": f"echo-{sid}",
                    "namespace": NS,
                    "labels": {
                        "voltgrid.dev/managed": "true",
                        "voltgrid.dev/function": "echo",
                        "voltgrid.dev/session": sid,
                        "voltgrid.dev/role": "instance",
                    },
                },
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            },
            "ADDED",
        )
    patches = len(api[kmock.method.PATCH])
    await ctl.sweep_once()
    assert len(api[kmock.method.PATCH]) == patches + 1  # two pod events, one status write
    status = stored(api, FUNCTIONS, "echo")["status"]
    assert (status["instances"], status["readyInstances"], status["activeSessions"]) == (2, 2, 2)


async def test_the_watch_event_of_its_own_status_write_is_skipped(
    api: kmock.KubernetesEmulator, ctl: Controllers
) -> None:
    add_node(api)
    body = function(isolation={"allowUnsandboxed": True})
    body["metadata"]["resourceVersion"] = "7"  # kmock keeps it; the apiserver would return a new one
    api.objects[FUNCTIONS, NS, "echo"] = body
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    patches = len(api[kmock.method.PATCH])
    echo = {**stored(api, FUNCTIONS, "echo"), "status": {}}  # even a status that looks stale
    await ctl.functions.on_event(echo, "MODIFIED")
    assert len(api[kmock.method.PATCH]) == patches  # recognised by its version: no reconcile
    await ctl.functions.on_event(echo, "MODIFIED")  # the same version again is not an echo any more
    assert len(api[kmock.method.PATCH]) == patches + 1


async def test_a_write_racing_a_spec_change_expects_no_echo(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    body = function(isolation={"allowUnsandboxed": True})
    body["metadata"].update(resourceVersion="7", generation=2)  # the stored spec moved on meanwhile
    api.objects[FUNCTIONS, NS, "echo"] = body
    listed = {**body, "metadata": {**body["metadata"], "generation": 1, "resourceVersion": "6"}}
    await ctl.functions.on_event(listed, None)
    patches = len(api[kmock.method.PATCH])
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), "MODIFIED")
    assert len(api[kmock.method.PATCH]) == patches + 1  # generation 2 is reconciled
    assert stored(api, FUNCTIONS, "echo")["status"]["observedGeneration"] == 2


def condition_of(api: kmock.KubernetesEmulator, type_: str, name: str = "echo") -> dict[str, str]:
    status = stored(api, FUNCTIONS, name)["status"]
    cond = next(c for c in status["conditions"] if c["type"] == type_)
    return {"status": cond["status"], "reason": cond["reason"], "message": cond["message"]}


async def test_triggers_ready_sums_up_the_dispatchers_entries_and_never_drops_them(
    api: kmock.KubernetesEmulator, ctl: Controllers
) -> None:
    """The dispatcher writes status.triggers, the operator the conditions: the operator's write keeps
    the dispatcher's key, and its TriggersReady names the first problem (or a trigger no one reported)."""
    add_node(api)
    cron = {"name": "tick", "type": "cron", "cron": {"schedule": "@every 10s"}}
    orders = {
        "name": "orders",
        "type": "queue",
        "queue": {"broker": "RabbitMQ", "urlFrom": {"name": "mq"}, "queue": "o"},
    }
    body = function(isolation={"allowUnsandboxed": True}, triggers=[cron, orders])
    missing = {"name": "orders", "type": "queue", "status": "False", "reason": "SecretMissing", "message": "no mq"}
    body["status"] = {"triggers": [missing]}  # only orders reported so far, not ready
    api.objects[FUNCTIONS, NS, "echo"] = body
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    assert condition_of(api, "TriggersReady") == {
        "status": "False",
        "reason": "TriggerPending",
        "message": "tick: no trigger dispatcher has reported it yet; orders: no mq",
    }
    assert stored(api, FUNCTIONS, "echo")["status"]["triggers"] == [missing]  # the operator's patch kept it
    assert condition_of(api, "Ready")["status"] == "True"
    ok = [
        {"name": "tick", "type": "cron", "status": "True", "reason": "Scheduled", "message": ""},
        {"name": "orders", "type": "queue", "status": "True", "reason": "Consuming", "message": ""},
    ]
    written = json.loads(json.dumps(stored(api, FUNCTIONS, "echo"), default=dict))
    written["status"]["triggers"] = ok  # the dispatcher's merge patch
    api.objects[FUNCTIONS, NS, "echo"] = written
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), "MODIFIED")
    assert condition_of(api, "TriggersReady") == {
        "status": "True",
        "reason": "TriggersReady",
        "message": "2 trigger(s) ready",
    }
    assert stored(api, FUNCTIONS, "echo")["status"]["triggers"] == ok


async def test_a_function_without_triggers_has_no_triggers_condition(
    api: kmock.KubernetesEmulator, ctl: Controllers
) -> None:
    add_node(api)
    api.objects[FUNCTIONS, NS, "echo"] = function(isolation={"allowUnsandboxed": True})
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)
    assert [c["type"] for c in stored(api, FUNCTIONS, "echo")["status"]["conditions"]] == ["Ready"]
