"""The operator against the real cluster: sandboxes under gVisor or runc, TTLs, Function status and
warm pools, an operator killed mid-burst that converges after its restart, and two replicas with
peering (one acts; the standby takes over when the active one dies).

The operator runs as a child process (``voltgrid.controllers.main:run_operator``) scoped to a fresh
namespace, with the admin kubeconfig of the cluster fixture.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from e2ehelpers import wait_for
from voltgrid.controllers.core import PEERING_CHECK_S
from voltgrid.sandbox_claims import sign_claim, token_digest

pytestmark = pytest.mark.e2e

IMAGE: Final = "localhost/voltgrid/python:3.11"
SERVER: Final = ["python3", "-m", "http.server", "8888"]
OPERATOR: Final = "from voltgrid.controllers.main import run_operator; run_operator()"
EXAMPLES: Final = Path(__file__).resolve().parents[1] / "examples"
PEERING_CRDS: Final = Path(__file__).resolve().parents[1] / "crds" / "peering" / "peering.yaml"
#: kopf's peer lifetime (a dead active replica is trusted this long) plus the handover and a pod start.
TAKEOVER_TIMEOUT_S: Final = 150
RUNNING_OR_NOT: Final = ("Running", "NotStarted")


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
        self.proc = self.spawn_operator(**env)

    def spawn_operator(self, **env: str) -> subprocess.Popen[bytes]:
        variables = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "VOLTGRID_OPERATOR_NAMESPACES": self.ns,
            "VOLTGRID_OPERATOR_LIVENESS": "",
            "VOLTGRID_OPERATOR_METRICS": "",  # two replicas may run on this host at once
            "VOLTGRID_OPERATOR_SWEEP_INTERVAL": "2",
            **env,
        }
        return subprocess.Popen([sys.executable, "-c", OPERATOR], env=variables)

    def kill_operator(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
            self.proc = None


@pytest.fixture
def env(voltgrid_crds: Any) -> Iterator[Env]:
    cluster = voltgrid_crds
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
        env.cluster.without_gvisor(st["conditions"][0].get("message", "NoSandboxRuntime"))
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


#: Run inside the sandbox: can it open a TCP connection to argv[1]:argv[2]?
PROBE: Final = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except OSError as e:
    print("blocked", type(e).__name__)
"""
#: Two listening ports on one pod: the allow-list opens the first only.
TWO_PORTS: Final = (
    "import http.server as h, threading\n"
    "for port in (8080, 8081):\n"
    "    threading.Thread(target=h.HTTPServer(('', port), h.SimpleHTTPRequestHandler).serve_forever).start()\n"
)


def reachable_from_here(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


def test_sandbox_egress_is_denied_except_its_allow_list(env: Env) -> None:
    target = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "target"},
        "spec": {"containers": [{"name": "srv", "image": IMAGE, "command": ["python3", "-c", TWO_PORTS]}]},
    }
    env.apply(target)
    ip = wait_for("target IP", lambda: ((env.get("pod", "target") or {}).get("status") or {}).get("podIP"))
    wait_for("target listening", lambda: reachable_from_here(ip, 8080) and reachable_from_here(ip, 8081))
    env.apply(sandbox("fenced", network={"egress": [{"cidr": f"{ip}/32", "ports": [8080]}]}))
    st = wait_for("Running", lambda: (s := status(env, "sandbox", "fenced")).get("phase") == "Running" and s)
    assert env.get("networkpolicy", "fenced-egress") is not None
    node_ip = env.get("pod", st["podName"])["status"]["hostIP"]

    def probe(host: str, port: int) -> str:
        return env.kubectl("exec", st["podName"], "--", "python3", "-c", PROBE, host, str(port)).strip()

    # The allowed port opens; the other port of the same pod, and the node itself, do not (the
    # policy engine syncs within seconds of the pod's start, so the checks repeat until it has).
    wait_for("policy enforced", lambda: probe(ip, 8081).startswith("blocked"), timeout=60)
    assert probe(ip, 8080) == "open"
    assert probe(node_ip, 10250).startswith("blocked")
    assert reachable_from_here(ip, 8081)  # the port is up: the sandbox was refused by its policy


def run_code(endpoint: str, code: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://{endpoint}/run", data=json.dumps({"code": code}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def test_code_interpreter_example_runs_code_isolated_and_fenced(env: Env, voltgrid_image: str) -> None:
    env.kubectl("apply", "-f", str(EXAMPLES / "code-interpreter-sandbox.yaml"))
    st = wait_for("Running", lambda: (s := status(env, "sandbox", "interpreter")).get("phase") in RUNNING_OR_NOT and s)
    if st["phase"] == "NotStarted":  # no sandboxed runtime on this cluster: the example refuses, as it says
        assert st["conditions"][0]["reason"] == "NoSandboxRuntime"
        env.cluster.without_gvisor(st["conditions"][0].get("message", "NoSandboxRuntime"))
    assert st["sandboxed"] is True and st["expiresAt"]
    ran = wait_for("the interpreter to answer", lambda: _answer(st["endpoint"], "print(6 * 7)"))
    assert ran == {"exitCode": 0, "timedOut": False, "stdout": "42\n", "stderr": ""}
    node_ip = env.get("pod", st["podName"])["status"]["hostIP"]
    escape = f"import socket; socket.create_connection(({node_ip!r}, 10250), timeout=3)"
    fenced = wait_for("egress denied", lambda: (r := run_code(st["endpoint"], escape))["exitCode"] != 0 and r, 60)
    assert "Error" in fenced["stderr"]  # refused or timed out by the deny-all NetworkPolicy


def _answer(endpoint: str, code: str) -> dict[str, Any] | None:
    try:
        return run_code(endpoint, code)
    except OSError:  # the server in the pod may still be starting
        return None


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


def test_with_peering_one_replica_acts_and_the_standby_takes_over(env: Env) -> None:
    env.kill_operator(signal.SIGTERM)  # the fixture's standalone operator
    env.cluster.kubectl("apply", "-f", str(PEERING_CRDS))
    env.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "voltgrid"}})
    replicas = {
        name: env.spawn_operator(VOLTGRID_OPERATOR_PEERING="voltgrid", POD_ID=name) for name in ("op-a", "op-b")
    }

    def warm_pods(fn: str) -> int:
        return len(env.get("pods", selector=f"voltgrid.dev/function={fn},voltgrid.dev/role=warm")["items"])

    def ready_with_one_warm(fn: str) -> bool:
        status = (env.get("function", fn) or {}).get("status") or {}
        return status.get("warmInstances") == 1 and warm_pods(fn) == 1

    def peers() -> dict[str, Any]:
        return dict((env.get("kopfpeering", "voltgrid") or {}).get("status") or {})

    try:
        # Both replicas registered first: the steady state of two peers is what is under test (a
        # replica still importing would otherwise let the first one act alone, as it should).
        wait_for("both replicas are peers", lambda: set(peers()) == set(replicas), timeout=60)
        time.sleep(PEERING_CHECK_S + 1)  # each has read the other's entry: the lower one's gate is closed
        env.apply(function("ha-1", scaling={"warmPool": 1}))
        wait_for("ha-1 has its warm instance", lambda: ready_with_one_warm("ha-1"), timeout=120)
        assert all(proc.poll() is None for proc in replicas.values())
        registered = peers()
        assert set(registered) == set(replicas)
        active = max(registered, key=lambda name: int(registered[name]["priority"]))
        time.sleep(5)
        assert warm_pods("ha-1") == 1  # the standby added nothing

        replicas[active].kill()
        replicas.pop(active).wait(timeout=30)
        env.apply(function("ha-2", scaling={"warmPool": 1}))
        wait_for("the standby takes over", lambda: ready_with_one_warm("ha-2"), timeout=TAKEOVER_TIMEOUT_S)
        assert warm_pods("ha-1") == 1  # and duplicated nothing of what the other one did
    finally:
        for proc in replicas.values():
            proc.terminate()
            proc.wait(timeout=60)


#: Per language: code that sets state, then code whose output (or result) shows 42 from that state.
#: Go keeps no state (each execution is a program): its two runs share only the workspace's files.
LANGUAGE_RUNS: Final = {
    "python": ("x = 41", "x + 1"),
    "bash": ("X=41", "echo $((X + 1))"),
    "javascript": ("var x = 41", "x + 1"),
    "java": ("int x = 41;", "x + 1"),
    "ruby": ("x = 41", "x + 1"),
    "php": ("$x = 41;", "echo $x + 1;"),
    "r": ("x <- 41", "x + 1"),
    "go": (
        'import "os"\n\nfunc main() { os.WriteFile("x.txt", []byte("42"), 0o644) }',
        'import (\n\t"fmt"\n\t"os"\n)\n\nfunc main() { b, _ := os.ReadFile("x.txt"); fmt.Println(string(b)) }',
    ),
}


def test_every_language_runs_in_a_pool_sandbox_under_gvisor(env: Env, sandbox_image: str, tmp_path: Path) -> None:
    """The sandbox image's eight languages, each
    run twice in a claimed pool sandbox under gVisor (state kept between the runs where the language
    keeps it), and a matplotlib chart (Debian's) back as image/png."""
    key = operator_with_claim_key(env, tmp_path)
    env.apply(
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "SandboxTemplate",
            "metadata": {"name": "langs"},
            "spec": {
                "image": sandbox_image,
                "command": ["python3", "-m", "voltgrid.sandbox_agent", "--workspace", "/tmp"],
                "env": [{"name": "HOME", "value": "/tmp"}, {"name": "JUPYTER_RUNTIME_DIR", "value": "/tmp/jupyter"}],
                # A kernel, a JVM and six more interpreters at once.
                "resources": {"cpu": "1", "memory": "2Gi"},
                "replicas": 1,
            },
        }
    )
    st = wait_for(
        "the pool ready or refused", lambda: (s := status(env, "sandboxtemplate", "langs")).get("conditions") and s
    )
    if st["conditions"][0]["reason"] == "NoSandboxRuntime":
        env.cluster.without_gvisor(st["conditions"][0].get("message", "NoSandboxRuntime"))
    wait_for("a warm sandbox ready", lambda: status(env, "sandboxtemplate", "langs").get("ready") == 1, 600)
    [pod] = env.get("pods", selector="voltgrid.dev/sandbox-template=langs")["items"]
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    ip, token = pod["status"]["podIP"], f"claimant-{uuid.uuid4().hex}"
    sandbox_id = pod["metadata"]["labels"]["voltgrid.dev/sandbox-id"]
    signed = sign_claim(key, sandbox_id, token_digest(token), {}, time.time())
    assert _agent(ip, "/claim", "", {"claim": signed})[0] == 200
    for language, (define, use) in LANGUAGE_RUNS.items():
        runs = []
        for code in (define, use):
            status_code, text = _agent(ip, "/execute", token, {"language": language, "code": code, "timeout": 240})
            assert status_code == 200, (language, status_code, text)
            runs.append([json.loads(line) for line in text.splitlines()])
        assert runs[0][-1]["status"] == "ok", (language, runs[0])
        events = runs[1]
        assert events[-1]["status"] == "ok" and events[-1]["execution_count"] == 2, (language, events)
        shown = "".join(e.get("text", "") + e.get("data", {}).get("text/plain", "") for e in events)
        assert "42" in shown, (language, events)
    chart = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    status_code, text = _agent(ip, "/execute", token, {"language": "python", "code": chart, "timeout": 240})
    pngs = [e for e in map(json.loads, text.splitlines()) if e["type"] == "result" and "image/png" in e["data"]]
    assert status_code == 200 and len(pngs) == 1, text
    assert base64.b64decode(pngs[0]["data"]["image/png"]).startswith(b"\x89PNG"), text


def operator_with_claim_key(env: Env, tmp_path: Path) -> Ed25519PrivateKey:
    """The operator restarted with a claim key (the gateway's, in a release): its warm pods accept
    claims signed with it. The key, to sign claims as the gateway would."""
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "claim-key.pem"
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    env.kill_operator(signal.SIGTERM)
    env.start_operator(VOLTGRID_OPERATOR_SANDBOX_CLAIM_KEY_FILE=str(key_file))
    return key


def _agent(ip: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    """One call to a pool pod's agent; (status, body text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{ip}:49999{path}", data=data, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_sandbox_template_pool_fills_under_gvisor_and_a_claimed_agent_runs_code(
    env: Env, voltgrid_image: str, tmp_path: Path
) -> None:
    """The pool controller and the agent together: warm pods under gVisor that accept one claim signed
    with the key the operator was given (the gateway's, in a release), and nothing else."""
    key = operator_with_claim_key(env, tmp_path)
    writable = [{"name": n, "value": v} for n, v in (("HOME", "/tmp"), ("JUPYTER_RUNTIME_DIR", "/tmp/jupyter"))]
    env.apply(
        {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "SandboxTemplate",
            "metadata": {"name": "py"},
            "spec": {
                "image": voltgrid_image,
                "command": ["python3", "-m", "voltgrid.sandbox_agent", "--workspace", "/tmp"],
                "env": writable,
                "resources": {"cpu": "500m", "memory": "512Mi"},
                "replicas": 2,
            },
        }
    )
    st = wait_for(
        "the pool ready or refused", lambda: (s := status(env, "sandboxtemplate", "py")).get("conditions") and s
    )
    if st["conditions"][0]["reason"] == "NoSandboxRuntime":
        env.cluster.without_gvisor(st["conditions"][0].get("message", "NoSandboxRuntime"))
    wait_for("2 warm sandboxes ready", lambda: status(env, "sandboxtemplate", "py").get("ready") == 2, 300)
    pods = env.get("pods", selector="voltgrid.dev/sandbox-template=py")["items"]
    assert len(pods) == 2 and all(p["spec"]["runtimeClassName"] == "gvisor" for p in pods)
    ip = pods[0]["status"]["podIP"]
    sandbox_id = pods[0]["metadata"]["labels"]["voltgrid.dev/sandbox-id"]
    other_id = pods[1]["metadata"]["labels"]["voltgrid.dev/sandbox-id"]
    token = f"claimant-{uuid.uuid4().hex}"

    def claim(for_id: str, signer: Ed25519PrivateKey = key, tok: str = token) -> int:
        signed = sign_claim(signer, for_id, token_digest(tok), {"GREETING": "hi"}, time.time())
        return _agent(ip, "/claim", "", {"claim": signed})[0]

    assert _agent(ip, "/contexts", token)[0] == 401  # nothing opens before the claim
    assert claim(sandbox_id, signer=Ed25519PrivateKey.generate()) == 401  # not the gateway's key
    assert claim(other_id) == 401  # signed for the other pod
    assert claim(sandbox_id) == 200
    assert claim(sandbox_id, tok="x" * 32) == 409  # one claim only
    code, text = _agent(ip, "/execute", token, {"code": "import os\nprint(os.environ['GREETING'])\n6*7"})
    events = [json.loads(line) for line in text.splitlines()]
    assert code == 200 and events[0] == {"type": "stdout", "text": "hi\n"}, text
    assert events[1]["data"]["text/plain"] == "42" and events[-1]["status"] == "ok"
    assert _agent(ip, "/execute", "wrong-token-0123456789", {"code": "1"})[0] == 401
    assert _agent(ip, "/files/..%2F..%2Fetc%2Fpasswd", token)[0] in (403, 404)
    env.kubectl("scale", "sandboxtemplate/py", "--replicas=3")
    wait_for("the pool scaled to 3", lambda: status(env, "sandboxtemplate", "py").get("ready") == 3, 300)
