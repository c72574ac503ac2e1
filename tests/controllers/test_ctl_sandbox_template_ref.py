"""``Sandbox.spec.templateRef`` against kmock, with a real in-sandbox agent behind each pool pod.

The pool controller makes the pods (kmock stores them); each pod that "becomes ready" gets a real
agent (:func:`voltgrid.sandbox_agent.server.build_app`, the pod's pre-minted id, the public half of
the operator's claim key) on a loopback port, and the pod's IP and port are pointed at it. The
operator then claims it over HTTP exactly as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
from aiohttp import web
from ctlfakes import (
    EPOCH,
    NETPOLS,
    NS,
    PODS,
    SANDBOXES,
    TEMPLATES,
    add_node,
    add_runtime_class,
    names,
    stored,
)

from conftest import CLAIM_KEY_PEM
from ports import free_port
from voltgrid.api.pool import (
    ANNOTATION_CLAIMED_AT,
    ANNOTATION_EXPIRES,
    ANNOTATION_METADATA,
    ANNOTATION_TOKEN_SHA256,
    LABEL_CLAIMED,
    LABEL_SANDBOX_ID,
)
from voltgrid.api.sandbox import Sandbox
from voltgrid.api.sandboxtemplate import SandboxTemplateSpec
from voltgrid.controllers.builders.sandbox import bound_expiry
from voltgrid.controllers.core import Controllers
from voltgrid.controllers.main import build_controllers
from voltgrid.controllers.settings import OperatorSettings
from voltgrid.sandbox_agent.agent import AgentSettings
from voltgrid.sandbox_agent.server import AGENT, build_app
from voltgrid.sandbox_claims import load_signing_key, public_key_text, sign_claim, token_digest

GV = {"voltgrid.dev/gvisor": "true"}
TOKEN = "0123456789abcdef" * 4  # what `openssl rand -hex 32` prints
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
LABEL_SANDBOX = "voltgrid.dev/sandbox"


class Clock:
    """The operator's wall clock, moved by the test (expiry without waiting)."""

    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> datetime:
        return self.now


class Agents:
    """A real agent per pool pod that became ready, on a loopback port."""

    def __init__(self, workspace: Path, public_key: str) -> None:
        self.workspace = workspace
        self.public_key = public_key
        self.runners: dict[str, web.AppRunner] = {}

    async def start(self, pod: str, sandbox_id: str) -> int:
        ws = self.workspace / pod
        ws.mkdir(parents=True)
        settings = AgentSettings(workspace=str(ws), claim_key=self.public_key, sandbox_id=sandbox_id)
        runner = web.AppRunner(build_app(settings, dict(os.environ)), shutdown_timeout=1.0)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners[pod] = runner
        return port

    def env(self, pod: str) -> dict[str, str]:
        return dict(self.runners[pod].app[AGENT].env)

    async def close(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ctl(api: kmock.KubernetesEmulator, tmp_path: Path, clock: Clock) -> AsyncIterator[Controllers]:
    key_file = tmp_path / "claim-key.pem"
    key_file.write_bytes(CLAIM_KEY_PEM)
    settings = OperatorSettings(namespaces=(NS,), sandbox_delete_grace=30, sandbox_claim_key_file=str(key_file))
    controllers = build_controllers(settings, clock=clock)
    controllers.ctx.client.login(kopf.ConnectionInfo(server=str(api.url)))
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)
    await controllers.resync()
    yield controllers
    await controllers.ctx.client.close()


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Agents]:
    fleet = Agents(tmp_path / "agents", public_key_text(load_signing_key(CLAIM_KEY_PEM)))
    yield fleet
    await fleet.close()


async def pool_of(api: kmock.KubernetesEmulator, ctl: Controllers, replicas: int, **spec: Any) -> list[str]:
    api.objects[TEMPLATES, NS, "py"] = {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "SandboxTemplate",
        "metadata": {"name": "py", "namespace": NS, "uid": "uid-py", "generation": 1},
        "spec": {"image": "sandbox-python:1", "replicas": replicas, **spec},
    }
    await ctl.pools.on_event(stored(api, TEMPLATES, "py"), None)
    return names(api, PODS)


async def ready(api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents, pod: str, *, age: int = 0) -> str:
    """The kubelet's part: the pod's agent listens (a real one here) and answered /health. ``age``:
    seconds before the epoch it was created (the claim takes the oldest ready pod first)."""
    sandbox_id = stored(api, PODS, pod)["metadata"]["labels"][LABEL_SANDBOX_ID]
    port = await agents.start(pod, sandbox_id)
    api.objects[PODS, NS, pod].patch(
        {
            "metadata": {"creationTimestamp": (EPOCH - timedelta(seconds=age)).isoformat()},
            "spec": {"containers": [{"name": "sandbox", "ports": [{"containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    await ctl.on_pod(stored(api, PODS, pod), "MODIFIED")
    return sandbox_id


async def apply_sandbox(api: kmock.KubernetesEmulator, ctl: Controllers, name: str = "sbx", **spec: Any) -> None:
    api.objects[SANDBOXES, NS, name] = {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": EPOCH.isoformat(),
        },
        "spec": {"templateRef": "py", "tokenSha256": DIGEST, **spec},
    }
    await ctl.sandboxes.on_event(stored(api, SANDBOXES, name), None)


def status(api: kmock.KubernetesEmulator, name: str = "sbx") -> dict[str, Any]:
    return dict(stored(api, SANDBOXES, name).get("status") or {})


async def agent_call(pod: dict[str, Any], token: str) -> int:
    """An authorised call on the pod's agent, as the gateway makes it for ``status.url``."""
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/contexts", headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        return answer.status


async def test_binds_a_warm_pod_records_it_as_the_gateway_does_and_the_pool_refills(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents, clock: Clock
) -> None:
    [first, second] = await pool_of(api, ctl, 2)
    sid = await ready(api, ctl, agents, first, age=10)
    await ready(api, ctl, agents, second)
    await apply_sandbox(api, ctl, ttl="10m", env=[{"name": "GREETING", "value": "hi"}])
    st = status(api)
    assert st["phase"] == "Running" and st["conditions"][0]["reason"] == "Running"
    assert (st["podName"], st["sandboxId"], st["url"]) == (first, sid, f"/_voltgrid/v1/sandboxes/{sid}")
    assert st["startedAt"] == "2030-01-01T00:00:00Z" and st["expiresAt"] == "2030-01-01T00:10:00Z"
    assert (st["runtimeClassName"], st["sandboxed"]) == ("gvisor", True)  # the pool's choice, by the template
    pod = stored(api, PODS, first)
    labels, ann = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert (labels[LABEL_CLAIMED], labels[LABEL_SANDBOX]) == ("true", "sbx")
    assert ann[ANNOTATION_TOKEN_SHA256] == DIGEST  # what every gateway replica checks the token against
    assert float(ann[ANNOTATION_EXPIRES]) == (EPOCH + timedelta(minutes=10)).timestamp()
    assert float(ann[ANNOTATION_CLAIMED_AT]) == EPOCH.timestamp()
    assert json.loads(ann[ANNOTATION_METADATA]) == {"sandbox": "sbx"}
    assert [o["kind"] for o in pod["metadata"]["ownerReferences"]] == ["SandboxTemplate"]  # its egress policy's owner
    # The agent took the claim: the user's token opens it, another does not; the env reached it.
    assert await agent_call(pod, TOKEN) == 200
    assert await agent_call(pod, "not-the-token") == 401
    assert agents.env(first)["GREETING"] == "hi"
    assert TOKEN not in repr(stored(api, SANDBOXES, "sbx")) + repr(pod)  # only its digest is stored
    # The pool counts the claim and makes a warm pod in its place.
    await ctl.on_pod(pod, "MODIFIED")
    tpl = stored(api, TEMPLATES, "py")["status"]
    assert (tpl["claimed"], tpl["ready"], tpl["warming"]) == (1, 1, 1)
    assert len(names(api, PODS)) == 3
    # Later events of the bound pod keep the status (no second binding, no flapping).
    await ctl.sandboxes.on_event(stored(api, SANDBOXES, "sbx"), None)
    assert (
        status(api)["podName"] == first and stored(api, PODS, second)["metadata"]["labels"].get(LABEL_CLAIMED) is None
    )


async def test_a_dry_pool_leaves_it_pending_grows_the_pool_and_binds_once_a_pod_is_ready(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents
) -> None:
    assert await pool_of(api, ctl, 0) == []
    await apply_sandbox(api, ctl)
    st = status(api)
    assert st["phase"] == "Pending" and st["conditions"][0]["reason"] == "PoolEmpty"
    assert ctl.ctx.pool_waiting == {(NS, "py"): {(NS, "sbx")}}
    assert ctl.ctx.scheduler.due_at(("sandbox", NS, "sbx")) == EPOCH + timedelta(seconds=30)  # a look again
    [made] = names(api, PODS)  # creation on demand: the waiting Sandbox counts as a waiting claim
    sid = await ready(api, ctl, agents, made)  # its readiness ends the wait, no Sandbox event needed
    st = status(api)
    assert (st["phase"], st["podName"], st["sandboxId"]) == ("Running", made, sid)
    assert st["expiresAt"] == "2030-01-01T00:15:00Z"  # the template's default ttl
    assert ctl.ctx.pool_waiting == {}


async def test_a_pod_the_gateway_claimed_first_is_left_to_it_and_the_next_one_is_bound(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    """Two claimers, one pod: the agent takes ONE claim; the loser (409) takes the next pod and
    neither burns nor labels the winner's."""
    [first, second] = await pool_of(api, ctl, 2)
    sid_first = await ready(api, ctl, agents, first, age=10)  # the one a claim picks first
    sid_second = await ready(api, ctl, agents, second)
    # A gateway replica claims the first pod; its bookkeeping patch has not landed yet.
    gateway_token = "gateway-user-token"
    signed = sign_claim(load_signing_key(CLAIM_KEY_PEM), sid_first, token_digest(gateway_token), {}, time.time())
    pod = stored(api, PODS, first)
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/claim", json={"claim": signed}) as r,
    ):
        assert r.status == 200
    with caplog.at_level(logging.INFO, logger="voltgrid.controllers.sandboxes"):
        await apply_sandbox(api, ctl)
    assert f"pool pod {NS}/{first} was claimed by another claimer" in caplog.text  # tried first: 409
    st = status(api)
    assert (st["phase"], st["podName"], st["sandboxId"]) == ("Running", second, sid_second)
    kept = stored(api, PODS, first)
    assert first in names(api, PODS) and LABEL_SANDBOX not in kept["metadata"]["labels"]
    assert await agent_call(kept, gateway_token) == 200  # still the gateway user's sandbox
    assert await agent_call(kept, TOKEN) == 401


async def test_sandboxes_bound_at_once_get_a_pod_each(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents
) -> None:
    pods = await pool_of(api, ctl, 3)
    for age, pod in enumerate(pods):
        await ready(api, ctl, agents, pod, age=age)
    await asyncio.gather(*(apply_sandbox(api, ctl, f"s{i}") for i in range(3)))
    bound = [status(api, f"s{i}").get("podName") for i in range(3)]
    assert sorted(bound) == sorted(pods), bound


async def test_a_pod_that_refuses_the_claim_is_burnt_and_the_next_one_is_bound(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents
) -> None:
    [first, second] = await pool_of(api, ctl, 2)
    await ready(api, ctl, agents, first, age=10)
    await agents.runners.pop(first).cleanup()  # its agent is gone: nothing answers the claim
    await ready(api, ctl, agents, second)
    await apply_sandbox(api, ctl)
    assert status(api)["podName"] == second
    assert first not in names(api, PODS)  # burnt: never handed to anyone


async def test_a_claim_the_agent_refuses_as_malformed_burns_no_pod(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents
) -> None:
    """An env name the agent refuses (its token's own) is the Sandbox's fault: no pod is burnt for it."""
    [first] = await pool_of(api, ctl, 1)
    await ready(api, ctl, agents, first)
    await apply_sandbox(api, ctl, env=[{"name": "VOLTGRID_SANDBOX_TOKEN", "value": "mine"}])
    st = status(api)
    assert st["phase"] == "NotStarted" and st["conditions"][0]["reason"] == "ClaimRefused"
    assert names(api, PODS) == [first] and LABEL_CLAIMED not in stored(api, PODS, first)["metadata"]["labels"]
    assert ctl.ctx.pool_waiting == {}


async def test_deleting_the_sandbox_burns_its_pod_and_an_orphan_is_burnt_on_its_next_event(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents, clock: Clock
) -> None:
    [first, second] = await pool_of(api, ctl, 2)
    await ready(api, ctl, agents, first, age=10)
    await ready(api, ctl, agents, second)
    await apply_sandbox(api, ctl)
    await apply_sandbox(api, ctl, "other")
    assert (status(api)["podName"], status(api, "other")["podName"]) == (first, second)
    body = stored(api, SANDBOXES, "sbx")
    del api.objects[SANDBOXES, NS, "sbx"]
    await ctl.sandboxes.on_event(body, "DELETED")
    assert first not in names(api, PODS)
    # "other" goes while no operator runs: at the next start, its pod's first event (kopf lists the
    # pods) burns it. (No ownerReference to the Sandbox could: the template stays an owner.)
    del api.objects[SANDBOXES, NS, "other"]
    restarted = build_controllers(ctl.ctx.settings, clock=clock)
    restarted.ctx.client.login(kopf.ConnectionInfo(server=str(api.url)))
    try:
        await restarted.resync()
        await restarted.on_pod(stored(api, PODS, second), None)
    finally:
        await restarted.ctx.client.close()
    assert second not in names(api, PODS)


async def test_a_sandbox_deleted_while_its_claim_is_in_flight_burns_what_it_bound(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents
) -> None:
    [first] = await pool_of(api, ctl, 1)
    await ready(api, ctl, agents, first)
    binding = asyncio.create_task(apply_sandbox(api, ctl))
    for _ in range(1000):  # until the binding waits on its first request (a few loop turns)
        if (NS, "sbx") in ctl.sandboxes.binding:
            break
        await asyncio.sleep(0)
    assert (NS, "sbx") in ctl.sandboxes.binding
    body = stored(api, SANDBOXES, "sbx")
    del api.objects[SANDBOXES, NS, "sbx"]
    await ctl.sandboxes.on_event(body, "DELETED")
    await binding
    assert first not in names(api, PODS)
    assert (NS, "sbx") not in ctl.sandboxes.live and not ctl.sandboxes.gone


async def test_expiry_burns_the_pod(
    api: kmock.KubernetesEmulator, ctl: Controllers, agents: Agents, clock: Clock
) -> None:
    [first] = await pool_of(api, ctl, 1, maxTtl="30m")
    await ready(api, ctl, agents, first)
    await apply_sandbox(api, ctl, ttl="1h")  # longer than the template allows: cut to maxTtl
    assert status(api)["expiresAt"] == "2030-01-01T00:30:00Z"
    assert ctl.ctx.scheduler.due_at(("sandbox", NS, "sbx")) == EPOCH + timedelta(minutes=30)
    clock.now = EPOCH + timedelta(minutes=30, seconds=1)
    await ctl.on_deadline(("sandbox", NS, "sbx"))
    assert first not in names(api, PODS)
    st = status(api)
    assert st["phase"] == "Expired" and st["expiresAt"] == "2030-01-01T00:30:00Z"
    assert names(api, NETPOLS) == ["py-pool-" + stored(api, TEMPLATES, "py")["status"]["templateHash"]]


async def test_without_the_template_it_waits_and_without_the_claim_key_it_does_not_start(
    api: kmock.KubernetesEmulator, ctl: Controllers
) -> None:
    await apply_sandbox(api, ctl, templateRef="missing")
    st = status(api)
    assert st["phase"] == "Pending" and st["conditions"][0]["reason"] == "TemplateNotFound"
    keyless = build_controllers(OperatorSettings(namespaces=(NS,)))
    keyless.ctx.client.login(kopf.ConnectionInfo(server=str(api.url)))
    try:
        await apply_sandbox(api, keyless, "keyless")
        st = status(api, "keyless")
        assert st["phase"] == "NotStarted" and st["conditions"][0]["reason"] == "NoClaimKey"
    finally:
        await keyless.ctx.client.close()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, "00:15:00"),  # the template's ttl
        ({"ttl": "5m"}, "00:05:00"),
        ({"ttl": "2h"}, "01:00:00"),  # bounded by maxTtl
        ({"expiresAt": "2030-01-01T00:20:00Z"}, "00:20:00"),
        ({"expiresAt": "2030-01-02T00:00:00Z"}, "01:00:00"),  # bounded by maxTtl
    ],
)
def test_bound_expiry(spec: dict[str, Any], expected: str) -> None:
    sandbox = Sandbox.model_validate({"spec": {"templateRef": "py", "tokenSha256": DIGEST, **spec}})
    template = SandboxTemplateSpec.model_validate({"image": "x", "ttl": "15m", "maxTtl": "1h"})
    assert bound_expiry(sandbox, template, EPOCH).isoformat() == f"2030-01-01T{expected}+00:00"
