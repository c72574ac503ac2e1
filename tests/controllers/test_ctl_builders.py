"""Pure builders of the controllers, table-tested."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from ctlfakes import EPOCH, NS

from voltgrid.api.common import Isolation
from voltgrid.api.function import Scaling
from voltgrid.api.sandbox import Sandbox, SandboxPhase
from voltgrid.api.session import SessionPhase
from voltgrid.controllers.builders import sandbox as sandbox_builder
from voltgrid.controllers.builders import session as session_builder
from voltgrid.controllers.builders import status as status_builder
from voltgrid.controllers.builders.pods import PodInfo, count, plan_pool, reapable
from voltgrid.controllers.builders.runtime import RuntimeClassInfo, is_sandboxed, select_runtime

KATA = {"katacontainers.io/kata-runtime": "true"}
GV = {"voltgrid.dev/gvisor": "true"}
CLASSES = {
    "kata-fc": RuntimeClassInfo("kata-fc", KATA),
    "gvisor": RuntimeClassInfo("runsc", GV),
    "plain": RuntimeClassInfo("runc"),
    "anywhere": RuntimeClassInfo("runsc"),
}


@pytest.mark.parametrize(("gpu", "expected"), [(0, "kata-fc"), (0.25, "gvisor"), (1, "kata-fc")])
def test_fractional_gpus_skip_vm_runtimes(gpu: float, expected: str) -> None:
    choice = select_runtime(Isolation(), CLASSES, [KATA, GV], gpu)
    assert choice.runtime_class_name == expected


@pytest.mark.parametrize(
    ("isolation", "nodes", "expected"),
    [
        ({}, [KATA, GV], (True, "kata-fc", True, "RuntimeSelected")),
        ({}, [GV], (True, "gvisor", True, "RuntimeSelected")),
        ({}, [{}], (False, None, False, "NoSandboxRuntime")),
        ({"allowUnsandboxed": True}, [{}], (True, None, False, "Unsandboxed")),
        ({"policy": ["missing", "gvisor"]}, [GV], (True, "gvisor", True, "RuntimeSelected")),
        ({"policy": ["anywhere"]}, [{}], (True, "anywhere", True, "RuntimeSelected")),
        ({"policy": []}, [GV], (False, None, False, "NoSandboxRuntime")),
        ({"runtimeClassName": "gvisor"}, [KATA], (False, None, False, "NoSandboxRuntime")),
        ({"runtimeClassName": "kata-fc"}, [KATA], (True, "kata-fc", True, "RuntimeSelected")),
        ({"runtimeClassName": "plain"}, [{}], (False, None, False, "NoSandboxRuntime")),
        ({"runtimeClassName": "plain", "allowUnsandboxed": True}, [{}], (True, "plain", False, "Unsandboxed")),
        ({}, [], (False, None, False, "NoSandboxRuntime")),
    ],
)
def test_select_runtime(isolation: dict[str, Any], nodes: list[dict[str, str]], expected: tuple[object, ...]) -> None:
    choice = select_runtime(Isolation.model_validate(isolation), CLASSES, nodes)
    assert (choice.runnable, choice.runtime_class_name, choice.sandboxed, choice.reason) == expected


def pod(
    name: str,
    role: str = "warm",
    *,
    age: float = 0,
    active: float | None = None,
    phase: str = "Running",
    ready: bool = True,
    **kw: Any,
) -> PodInfo:
    return PodInfo(
        namespace=NS,
        name=name,
        role=role,
        function="echo",
        session=kw.pop("session", name),
        phase=phase,
        ready=ready,
        created=EPOCH - timedelta(seconds=age),
        last_active=None if active is None else EPOCH - timedelta(seconds=active),
        **kw,
    )


@pytest.mark.parametrize(
    ("scaling", "pods", "create", "delete"),
    [
        ({}, [], 0, ()),
        ({"warmPool": 2}, [], 2, ()),
        ({"warmPool": 2}, [pod("a")], 1, ()),
        ({"warmPool": 2}, [pod("a", active=1), pod("b")], 1, ()),  # a is claimed: top up
        ({"warmPool": 1}, [pod("a", age=10), pod("b", age=5)], 0, ("b",)),  # excess: youngest goes first
        ({"minInstances": 3}, [pod("i", "instance")], 2, ()),
        ({"minInstances": 1, "warmPool": 1}, [pod("i", "instance")], 1, ()),
        ({"warmPool": 5, "maxInstances": 5}, [pod(f"i{n}", "instance") for n in range(4)], 1, ()),
        ({"warmPool": 1}, [pod("dead", phase="Failed")], 1, ("dead",)),
        ({"warmPool": 1}, [pod("gone", deleting=True)], 1, ()),
    ],
)
def test_plan_pool(scaling: dict[str, Any], pods: list[PodInfo], create: int, delete: tuple[str, ...]) -> None:
    plan = plan_pool(Scaling.model_validate(scaling), pods)
    assert (plan.create_warm, plan.delete) == (create, delete)


@pytest.mark.parametrize(
    ("p", "reap"),
    [
        (pod("w", "warm", age=10_000, idle_timeout=60), False),  # unclaimed warm: the pool, not idle
        (pod("c", "warm", age=10_000, active=200, idle_timeout=60), True),  # claimed and idle past grace
        (pod("c", "warm", age=10_000, active=100, idle_timeout=60), False),  # within idle + grace
        (pod("i", "instance", age=121, idle_timeout=60), True),  # never checkpointed: creation time counts
        (pod("i", "instance", age=119, idle_timeout=60), False),
        (pod("k", "instance", age=10_000, idle_timeout=60, keep_warm=True), False),
        (pod("n", "instance", age=10_000), False),  # no idle timeout annotation: not ours to judge
    ],
)
def test_reapable(p: PodInfo, reap: bool) -> None:
    assert reapable(p, EPOCH, grace=60) is reap


def test_counts() -> None:
    pods = [
        pod("w"),
        pod("c", active=1, session="s1"),
        pod("i", "instance", ready=False, session="s2"),
        pod("j", "instance", session="s2"),
        pod("x", "instance", deleting=True),
    ]
    got = count(pods)
    assert (got.instances, got.ready, got.warm, got.active_sessions) == (3, 2, 1, 2)


def test_condition_keeps_transition_time_while_status_holds() -> None:
    first = status_builder.condition(None, "Ready", True, "Ready", "ok", generation=1, now=EPOCH)
    later = EPOCH + timedelta(hours=1)
    same = status_builder.condition([first], "Ready", True, "Ready", "still ok", generation=2, now=later)
    flipped = status_builder.condition([first], "Ready", False, "NoSandboxRuntime", "x", generation=2, now=later)
    assert same["lastTransitionTime"] == first["lastTransitionTime"]
    assert flipped["lastTransitionTime"] == status_builder.rfc3339(later)
    assert not status_builder.changed({"conditions": [first], "instances": 0}, {"conditions": [first], "instances": 0})
    assert status_builder.changed({"conditions": [first]}, {"conditions": [flipped]})


def sbx(**spec: Any) -> Sandbox:
    return Sandbox.model_validate(
        {
            "metadata": {"name": "s", "namespace": NS, "uid": "u", "creationTimestamp": EPOCH},
            "spec": {"image": "py", **spec},
        }
    )


@pytest.mark.parametrize(
    ("spec", "started", "expected"),
    [
        ({}, None, None),
        ({"ttl": "10m"}, None, EPOCH + timedelta(minutes=10)),
        ({"ttl": "10m"}, EPOCH + timedelta(minutes=1), EPOCH + timedelta(minutes=11)),
        ({"expiresAt": "2030-01-02T00:00:00Z"}, None, EPOCH + timedelta(days=1)),
    ],
)
def test_sandbox_expiry(spec: dict[str, Any], started: Any, expected: Any) -> None:
    assert sandbox_builder.expiry(sbx(**spec), started) == expected


@pytest.mark.parametrize(
    ("p", "phase", "endpoint"),
    [
        (None, SandboxPhase.PENDING, None),
        (pod("s", "sandbox", phase="Pending", ready=False), SandboxPhase.PENDING, None),
        (pod("s", "sandbox", ready=False, pod_ip="10.0.0.5", port=8888), SandboxPhase.PENDING, "10.0.0.5:8888"),
        (pod("s", "sandbox", pod_ip="10.0.0.5", port=8888), SandboxPhase.RUNNING, "10.0.0.5:8888"),
        (pod("s", "sandbox", pod_ip="fd00::5", port=80), SandboxPhase.RUNNING, "[fd00::5]:80"),
        (pod("s", "sandbox", phase="Succeeded"), SandboxPhase.SUCCEEDED, None),
        (pod("s", "sandbox", phase="Failed"), SandboxPhase.FAILED, None),
    ],
)
def test_sandbox_phase_and_endpoint(p: PodInfo | None, phase: SandboxPhase, endpoint: str | None) -> None:
    assert (sandbox_builder.phase_of(p), sandbox_builder.endpoint(p)) == (phase, endpoint)


@pytest.mark.parametrize(
    ("network", "egress"),
    [
        ({}, []),
        ({"allowDns": True}, [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]),
        ({"egress": [{"cidr": "10.1.0.0/16"}]}, [{"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}]),
        (
            {"egress": [{"cidr": "1.2.3.4/32", "ports": [443]}]},
            [
                {
                    "to": [{"ipBlock": {"cidr": "1.2.3.4/32"}}],
                    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 443}],
                }
            ],
        ),
    ],
)
def test_network_policy_denies_egress_but_the_allow_list(network: dict[str, Any], egress: list[Any]) -> None:
    policy = sandbox_builder.network_policy(sbx(network=network))
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"] == egress
    assert policy["spec"]["podSelector"]["matchLabels"]["voltgrid.dev/sandbox"] == "s"
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "Sandbox"


@pytest.mark.parametrize(
    ("pods", "expiry", "previous", "expected"),
    [
        ([], None, None, SessionPhase.PENDING),
        ([], None, SessionPhase.ACTIVE, SessionPhase.RELEASED),
        ([pod("p", "instance", active=10)], None, None, SessionPhase.ACTIVE),
        ([pod("p", "instance", active=1000)], None, None, SessionPhase.IDLE),
        ([pod("p", "instance", active=10)], EPOCH, None, SessionPhase.EXPIRED),
    ],
)
def test_session_phase(pods: list[PodInfo], expiry: Any, previous: SessionPhase | None, expected: SessionPhase) -> None:
    got = session_builder.phase(pods, now=EPOCH, idle=timedelta(minutes=15), expiry=expiry, previous=previous)
    assert got == expected


@pytest.mark.parametrize(
    ("runtime_class_name", "sandboxed"),
    [("gvisor", True), ("kata-fc", True), ("plain", False), ("gone", False), (None, False)],
)
def test_is_sandboxed(runtime_class_name: str | None, sandboxed: bool) -> None:
    """What a Sandbox bound from a pool reports of the pod's RuntimeClass."""
    assert is_sandboxed(runtime_class_name, CLASSES) is sandboxed
