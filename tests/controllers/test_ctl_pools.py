"""SandboxTemplate pools against kmock: fill, count, pace, roll out, burn after use, refill."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import kopf
import pytest
from ctlfakes import (
    EPOCH,
    NETPOLS,
    NS,
    PODS,
    SECRETS,
    TEMPLATES,
    add_node,
    add_runtime_class,
    names,
    stored,
    virtual_now,
)

from conftest import CLAIM_KEY_PEM
from voltgrid.api.pool import (
    ANNOTATION_EXPIRES,
    ANNOTATION_WAITING,
    LABEL_CLAIMED,
    LABEL_SANDBOX_ID,
    LABEL_TEMPLATE,
    LABEL_TEMPLATE_HASH,
)
from voltgrid.controllers.core import Controllers
from voltgrid.controllers.main import build_controllers
from voltgrid.controllers.settings import OperatorSettings
from voltgrid.sandbox_claims import load_signing_key, public_key_text

GV = {"voltgrid.dev/gvisor": "true"}


def template(name: str = "py", generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "SandboxTemplate",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation},
        "spec": {"image": "sandbox-python:1", **spec},
    }


def status(api: kmock.KubernetesEmulator) -> dict[str, Any]:
    return dict(stored(api, TEMPLATES, "py").get("status") or {})


async def apply(api: kmock.KubernetesEmulator, ctl: Controllers, **spec: Any) -> None:
    gen = int((stored(api, TEMPLATES, "py")["metadata"]["generation"]) + 1) if names(api, TEMPLATES) else 1
    api.objects[TEMPLATES, NS, "py"] = template(generation=gen, **spec)
    await ctl.pools.on_event(stored(api, TEMPLATES, "py"), None)


async def ready(api: kmock.KubernetesEmulator, ctl: Controllers, *pods: str) -> None:
    """The kubelet's part: the agent answered /health."""
    for name in pods:
        api.objects[PODS, NS, name].patch(
            {
                "metadata": {"creationTimestamp": EPOCH.isoformat()},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )
        await ctl.on_pod(stored(api, PODS, name), "MODIFIED")


def hashes(api: kmock.KubernetesEmulator) -> dict[str, str]:
    return {n: stored(api, PODS, n)["metadata"]["labels"][LABEL_TEMPLATE_HASH] for n in names(api, PODS)}


@pytest.fixture
async def gvisor(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    await ctl.resync()


async def test_pool_fills_under_gvisor_with_ids_and_the_claim_key_and_counts(
    api: kmock.KubernetesEmulator, ctl: Controllers, gvisor: None
) -> None:
    await apply(api, ctl, replicas=2)
    pods = names(api, PODS)
    assert len(pods) == 2 and all(p.startswith("py-") for p in pods)
    pod = stored(api, PODS, pods[0])
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["metadata"]["labels"][LABEL_TEMPLATE] == "py"
    assert names(api, SECRETS) == []  # the template's owner makes it; the operator never touches Secrets
    revision = pod["metadata"]["labels"][LABEL_TEMPLATE_HASH]
    [policy_name] = names(api, NETPOLS)
    policy = stored(api, NETPOLS, policy_name)["spec"]
    assert policy["podSelector"]["matchLabels"] == {LABEL_TEMPLATE: "py", LABEL_TEMPLATE_HASH: revision}
    assert policy["policyTypes"] == ["Egress"] and policy["egress"] == []  # egress denied: nothing allowed
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    claim_key = load_signing_key(CLAIM_KEY_PEM)  # the pod verifies claims with its public half, nothing more
    assert env["VOLTGRID_SANDBOX_CLAIM_KEY"] == public_key_text(claim_key)
    ids = {stored(api, PODS, p)["metadata"]["labels"][LABEL_SANDBOX_ID] for p in pods}
    assert env["VOLTGRID_SANDBOX_ID"] in ids and len(ids) == 2 and all(i.startswith("sb-") for i in ids)
    st = status(api)
    assert (st["replicas"], st["ready"], st["warming"], st["claimed"], st["updated"]) == (2, 0, 2, 0, 2)
    assert st["selector"] == f"{LABEL_TEMPLATE}=py,{LABEL_CLAIMED} notin (true)"
    await ready(api, ctl, *pods)
    assert (status(api)["ready"], status(api)["warming"]) == (2, 0)
    scrape = ctl.ctx.metrics.exposition().decode()
    assert 'voltgrid_operator_pool_pods{state="ready"} 2.0' in scrape
    assert 'voltgrid_operator_pool_pods{state="warming"} 0.0' in scrape
    assert "voltgrid_operator_pool_pods_created_total 2.0" in scrape


async def test_without_a_sandboxed_runtime_no_pod_starts(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    await ctl.resync()
    await apply(api, ctl, replicas=2)
    assert names(api, PODS) == []
    [cond] = status(api)["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "NoSandboxRuntime")
    # gVisor arrives: the pool fills without a new event of the template's own.
    add_node(api, "node-2", **GV)
    await ctl.on_node("node-2", GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    await ctl.on_runtime_class("gvisor", stored(api, "node.k8s.io/v1/runtimeclasses", "gvisor", None))
    assert len(names(api, PODS)) == 2


async def test_template_change_rolls_out_with_surge_and_never_touches_claimed(
    api: kmock.KubernetesEmulator, ctl: Controllers, gvisor: None
) -> None:
    await apply(api, ctl, replicas=2)
    first = names(api, PODS)
    await ready(api, ctl, *first)
    claimed = first[0]
    api.objects[PODS, NS, claimed].patch({"metadata": {"labels": {LABEL_CLAIMED: "true"}}})
    await ctl.on_pod(stored(api, PODS, claimed), "MODIFIED")  # the claim: one more warm pod is made
    assert len(names(api, PODS)) == 3 and status(api)["claimed"] == 1
    await apply(api, ctl, replicas=2, image="sandbox-python:2", network={"allowDns": True})
    new_hash = status(api)["templateHash"]
    assert len(names(api, NETPOLS)) == 2  # the claimed pod keeps the policy of its revision
    created = [n for n, h in hashes(api).items() if h == new_hash]
    # The old warming pod goes at once; the old ready one stays until new ones are ready.
    assert len(created) == 2 and len(names(api, PODS)) == 4
    await ready(api, ctl, *created)
    assert sorted(names(api, PODS)) == sorted([claimed, *created])  # the claimed pod kept its revision
    assert status(api)["updated"] == 2 and status(api)["claimed"] == 1
    await apply(api, ctl, replicas=0, image="sandbox-python:2", network={"allowDns": True})
    assert names(api, PODS) == [claimed]  # burn after use is the claim's business, never the pool's


async def test_concurrent_pod_events_never_overfill_the_pool(
    api: kmock.KubernetesEmulator, ctl: Controllers, gvisor: None
) -> None:
    await apply(api, ctl, replicas=3)
    first = names(api, PODS)
    for name in first:
        api.objects[PODS, NS, name].patch({"status": {"phase": "Failed"}})
    # kopf delivers the three pods' events at once, each reconciling the same template.
    await asyncio.gather(*(ctl.on_pod(stored(api, PODS, n), "MODIFIED") for n in first))
    alive = [n for n in names(api, PODS) if n not in first]
    assert len(alive) == 3, alive


async def test_a_pool_pod_that_dies_is_replaced(api: kmock.KubernetesEmulator, ctl: Controllers, gvisor: None) -> None:
    await apply(api, ctl, replicas=1)
    [pod] = names(api, PODS)
    api.objects[PODS, NS, pod].patch({"status": {"phase": "Failed"}})
    await ctl.on_pod(stored(api, PODS, pod), "MODIFIED")
    [replacement] = names(api, PODS)
    assert replacement != pod


@pytest.mark.looptime
async def test_refill_is_paced_by_refill_per_minute(
    api: kmock.KubernetesEmulator, ctl: Controllers, gvisor: None
) -> None:
    scheduler = asyncio.create_task(ctl.run_scheduler())
    try:
        await apply(api, ctl, replicas=3, refillPerMinute=1)
        assert len(names(api, PODS)) == 1
        assert ctl.ctx.scheduler.due_at(("pool", NS, "py")) is not None
        await asyncio.sleep(61)
        assert len(names(api, PODS)) == 2
        await asyncio.sleep(61)
        assert len(names(api, PODS)) == 3
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)


async def test_claims_waiting_on_a_dry_pool_grow_it_beyond_replicas(
    api: kmock.KubernetesEmulator, ctl: Controllers, gvisor: None
) -> None:
    await apply(api, ctl, replicas=1)
    assert len(names(api, PODS)) == 1
    body = template(generation=2, replicas=1)
    body["metadata"]["annotations"] = {ANNOTATION_WAITING: "2"}  # the gateway's note: two claims wait
    api.objects[TEMPLATES, NS, "py"] = body
    await ctl.pools.on_event(stored(api, TEMPLATES, "py"), None)
    assert len(names(api, PODS)) == 3


@pytest.mark.parametrize(("expired_for", "burnt"), [(120.0, True), (30.0, False)])
async def test_a_claimed_sandbox_past_its_expiry_and_grace_is_burnt(
    api: kmock.KubernetesEmulator, ctl: Controllers, gvisor: None, expired_for: float, burnt: bool
) -> None:
    """The gateway burns sandboxes on time; the pool burns one a gateway missed, 60 s late."""
    await apply(api, ctl, replicas=1)
    [pod] = names(api, PODS)
    now = ctl.ctx.clock().timestamp()
    claim = {"labels": {LABEL_CLAIMED: "true"}, "annotations": {ANNOTATION_EXPIRES: f"{now - expired_for:.3f}"}}
    api.objects[PODS, NS, pod].patch({"metadata": claim})
    await ctl.on_pod(stored(api, PODS, pod), "MODIFIED")
    assert (pod not in names(api, PODS)) is burnt
    if not burnt:
        assert ctl.ctx.scheduler.due_at(("pool", NS, "py")) is not None  # back when the grace is over


async def test_without_the_claim_key_a_template_is_not_ready(api: kmock.KubernetesEmulator) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    controllers = build_controllers(OperatorSettings(namespaces=(NS,)), clock=virtual_now)
    controllers.ctx.client.login(kopf.ConnectionInfo(server=str(api.url)))
    try:
        await controllers.resync()
        await apply(api, controllers, replicas=2)
        assert names(api, PODS) == []
        [cond] = status(api)["conditions"]
        assert (cond["status"], cond["reason"]) == ("False", "NoClaimKey")
        assert "sandbox_claim_key_file" in cond["message"]
    finally:
        await controllers.ctx.client.close()
