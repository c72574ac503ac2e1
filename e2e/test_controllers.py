"""The operator against the real cluster: sandboxes under gVisor or runc, TTLs, Function status and
warm pools, and an operator killed mid-burst that converges after its restart.

The operator runs as a child process (``voltgrid.controllers.main:run_operator``) scoped to a fresh
namespace, with the admin kubeconfig of the cluster fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

pytestmark = pytest.mark.e2e

IMAGE: Final = "localhost/voltgrid/python:3.11"
SERVER: Final = ["python3", "-m", "http.server", "8888"]
OPERATOR: Final = "from voltgrid.controllers.main import run_operator; run_operator()"
WAIT_S: Final = 120.0


class Env:
    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.proc: subprocess.Popen[bytes] | None = None

    def kubectl(self, *args: str, input: str | None = None) -> str:
        out: str = self.cluster.kubectl("-n", self.ns, *args, input=input).stdout
        return out

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str = "", selector: str = "") -> Any:
        args = ["get", kind, "-o", "json"] + ([name] if name else []) + (["-l", selector] if selector else [])
        done = self.cluster.kubectl("-n", self.ns, *args, check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def start_operator(self, **env: str) -> None:
        variables = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "VOLTGRID_OPERATOR_NAMESPACES": self.ns,
            "VOLTGRID_OPERATOR_LIVENESS": "",
            "VOLTGRID_OPERATOR_SWEEP_INTERVAL": "2",
            **env,
        }
        self.proc = subprocess.Popen([sys.executable, "-c", OPERATOR], env=variables)

    def kill_operator(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
            self.proc = None


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def env(cluster: Any) -> Iterator[Env]:
    ns = f"vg-ctl-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    e = Env(cluster, ns)
    e.start_operator(VOLTGRID_OPERATOR_SANDBOX_DELETE_GRACE="5")
    try:
        yield e
    finally:
        e.kill_operator(signal.SIGTERM)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def sandbox(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"image": IMAGE, "command": SERVER, "port": 8888, **spec},
    }


def function(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"image": IMAGE, "command": SERVER, "port": 8888, "isolation": {"allowUnsandboxed": True}, **spec},
    }


def status(env: Env, kind: str, name: str) -> dict[str, Any]:
    obj = env.get(kind, name)
    return dict((obj or {}).get("status") or {})


def test_default_policy_runs_under_gvisor_or_says_why_not(env: Env) -> None:
    env.apply(sandbox("gv"))
    st = wait_for(
        "a decision", lambda: (s := status(env, "sandbox", "gv")).get("phase") in ("Running", "NotStarted") and s
    )
    if st["phase"] == "NotStarted":
        assert st["conditions"][0]["reason"] == "NoSandboxRuntime"
        assert env.get("pods", selector="voltgrid.dev/sandbox=gv")["items"] == []
        return
    assert (st["runtimeClassName"], st["sandboxed"]) == ("gvisor", True)
    assert st["endpoint"].endswith(":8888")
    pod = env.get("pod", st["podName"])
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    # gVisor's kernel answers inside the pod, not the host's.
    dmesg = env.kubectl("exec", st["podName"], "--", "dmesg")
    assert "gVisor" in dmesg or "Starting gVisor" in dmesg


def test_opt_in_to_runc_runs_and_says_so(env: Env) -> None:
    env.apply(sandbox("plain", isolation={"policy": [], "allowUnsandboxed": True}))
    st = wait_for("Running", lambda: (s := status(env, "sandbox", "plain")).get("phase") == "Running" and s)
    assert st["sandboxed"] is False and "runtimeClassName" not in st
    assert "runtimeClassName" not in env.get("pod", st["podName"])["spec"]
    columns = env.kubectl("get", "sandbox", "plain")
    assert "false" in columns.splitlines()[1].split()


def test_ttl_sandbox_is_gone_after_its_ttl(env: Env) -> None:
    env.apply(sandbox("brief", ttl="15s", deleteAfterExpiry=True, isolation={"policy": [], "allowUnsandboxed": True}))
    wait_for("Running", lambda: status(env, "sandbox", "brief").get("phase") == "Running")
    wait_for("Expired", lambda: status(env, "sandbox", "brief").get("phase") == "Expired", timeout=60)
    assert wait_for("pod gone", lambda: env.get("pods", selector="voltgrid.dev/sandbox=brief")["items"] == [])
    wait_for("object deleted", lambda: env.get("sandbox", "brief") is None, timeout=60)


def test_function_ready_and_warm_pool_with_owner_references(env: Env) -> None:
    env.apply(function("echo", scaling={"warmPool": 2}))
    st = wait_for("Ready", lambda: (s := status(env, "function", "echo")).get("warmInstances") == 2 and s)
    assert st["conditions"][0]["status"] == "True"
    assert st["url"].endswith(f"/{env.ns}/echo/")
    uid = env.get("function", "echo")["metadata"]["uid"]
    pods = env.get("pods", selector="voltgrid.dev/function=echo,voltgrid.dev/role=warm")["items"]
    assert len(pods) == 2
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == uid for p in pods)
    env.kubectl("delete", "function", "echo")
    wait_for("pods garbage-collected", lambda: env.get("pods", selector="voltgrid.dev/function=echo")["items"] == [])


def test_operator_killed_mid_burst_converges(env: Env) -> None:
    n = 20
    for i in range(n):
        env.apply(function(f"burst-{i}", scaling={"warmPool": 1}))
        if i == n // 2:
            env.kill_operator()
            env.start_operator()
    env.kill_operator()
    env.start_operator()

    def converged() -> bool:
        fns = env.get("functions")["items"]
        ok = all((f.get("status") or {}).get("warmInstances") == 1 for f in fns)
        pods = env.get("pods", selector="voltgrid.dev/role=warm")["items"]
        return len(fns) == n and ok and len(pods) == n

    wait_for("every Function has exactly one warm pod", converged, timeout=180)
    pods = env.get("pods", selector="voltgrid.dev/managed=true")["items"]
    owners = {p["metadata"]["labels"]["voltgrid.dev/function"] for p in pods}
    assert owners == {f"burst-{i}" for i in range(n)}  # one each, none orphaned, none duplicated
    assert all(p["metadata"]["ownerReferences"] for p in pods)
